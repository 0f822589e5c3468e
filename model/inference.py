"""Prediction: one slide (``predict_slide``) or a manifest's rows (``predict_cohort``).

A slide is read at the model's ``target_mpp`` (data.read_slide), put on the canvas exactly as in
training (centre-padded with white, or centre-cropped: ``data.canvas.place``) and the strategy
gives

    probability = sigmoid(logit),  logit = head(GAP(F)),  cam[i, j] = head(F[i, j])

with ``cam`` the pre-sigmoid class activation map on the stride-32 grid (model/cam.py). A
``Prediction`` carries the CAM's geometry -- the prepared image's shape, its offset on the
canvas, ``target_mpp``, the slide's level-0 mpp and the level-0 origin of the image -- so that
``model.cam.export_prediction`` / ``prediction_regions`` turn it into a PNG overlay and a
GeoJSON in level-0 slide pixels without further arguments.

Bad input raises ``data.errors.InputError`` subclasses naming the file or the value:
``PredictionError`` here, ``CheckpointError``, ``SlideError``, ``CacheError``, ...
"""
import os
import sys

import numpy as np

from data.errors import InputError


class PredictionError(InputError):
    """Bad input to prediction: an argument, a manifest row, a cache (message names it)."""


class Prediction(object):
    """One slide's result. ``probability``, ``logit``; with ``cam=True`` also ``cam`` (the
    pre-sigmoid grid, float32 (ceil(H/32), ceil(W/32)) of the canvas), ``image`` (the prepared
    uint8 image at ``target_mpp``), and always its geometry: ``image_shape`` (h, w), ``offset``
    (top, left) of the image on the ``canvas`` px square, ``target_mpp``, ``level0_mpp`` and
    ``origin_xy`` (level-0 pixel of the image's top-left corner)."""

    __slots__ = ("probability", "logit", "cam", "image", "image_shape", "offset", "canvas",
                 "target_mpp", "level0_mpp", "origin_xy")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self):
        return "Prediction(probability={:.6f}, logit={:.6f}, cam={}, image_shape={})".format(
            self.probability, self.logit,
            None if self.cam is None else "{}x{} grid".format(*np.shape(self.cam)),
            tuple(self.image_shape))


def _config(config):
    if config is None:
        return None
    from model.config import load_config
    return load_config(config)


def _number(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise PredictionError("{} must be a positive number, got {!r}".format(name, value))
    return value


def _load_model(checkpoint_or_model):
    if isinstance(checkpoint_or_model, (str, bytes, os.PathLike)):
        from model.checkpoint import load_for_inference
        return load_for_inference(os.fspath(checkpoint_or_model))
    return checkpoint_or_model


class Predictor(object):
    """A model on a strategy and a canvas, ready for ``predict(slide)`` again and again.

    ``checkpoint_or_model``: a checkpoint path (``best.ckpt``) or a Keras model of
    ``model.resnet.build_model``. ``config`` (a YAML path, dict or loaded config) gives
    ``data.target_mpp``, ``data.canvas``, ``data.resample``, ``train.tile``/``memory_gb`` and,
    when ``strategy`` is 'auto', ``train.strategy``; explicit ``target_mpp``/``canvas``
    override it, and without a config both are required.
    """

    def __init__(self, checkpoint_or_model, config=None, target_mpp=None, canvas=None,
                 strategy="auto"):
        from model.strategy import NAMES
        cfg = _config(config)
        data = cfg["data"] if cfg is not None else {}
        train = cfg["train"] if cfg is not None else {}
        if target_mpp is None and "target_mpp" not in data:
            raise PredictionError("predict: target_mpp is needed (or a config with "
                                  "data.target_mpp)")
        if canvas is None and "canvas" not in data:
            raise PredictionError("predict: canvas is needed (or a config with data.canvas)")
        self.target_mpp = _number("target_mpp", data["target_mpp"] if target_mpp is None
                                  else target_mpp)
        canvas = data["canvas"] if canvas is None else canvas
        if not (isinstance(canvas, (int, np.integer)) and canvas >= 32):
            raise PredictionError("canvas must be an integer of at least 32 px, got {!r}".format(
                canvas))
        self.canvas = int(canvas)
        self.resample = data.get("resample", "area")
        # prepare --glass-to-white (not the paper's): a slide read here gets the same rewrite
        # as the cached images the model was trained on.
        from data.glass import check_threshold
        self.glass_to_white = check_threshold(data.get("glass_to_white"), "data.glass_to_white")
        if strategy == "auto" and train.get("strategy"):
            strategy = train["strategy"]
        if strategy not in NAMES:
            raise PredictionError("strategy must be one of {}, not {!r}".format(
                ", ".join(NAMES), strategy))

        import tensorflow as tf
        if not tf.executing_eagerly():
            tf.compat.v1.enable_v2_behavior()
        from data.mpi import rank
        from model.strategy import check_memory, make_strategy
        check_memory(strategy, self.canvas, training=False)   # before the checkpoint is read
        self.model = _load_model(checkpoint_or_model)
        self.strategy = make_strategy(
            strategy, self.model, tile=train.get("tile"), memory_gb=train.get("memory_gb"),
            canvas=self.canvas, training=False, mpp=self.target_mpp,
            log=lambda line: print(line, file=sys.stderr, flush=True) if rank() == 0 else None)

    def prepare(self, slide, level0_mpp=None):
        """(image at target_mpp, level-0 mpp) of a slide path or an (array, mpp) pair."""
        if isinstance(slide, (str, bytes, os.PathLike)):
            from data import read_slide
            from data.slide import slide_info
            path = os.fspath(slide)
            image = read_slide(path, self.target_mpp, mpp=level0_mpp, resample=self.resample)
            if level0_mpp is None:
                level0_mpp = slide_info(path)["mpp_x"]
            return self._glass(image), float(level0_mpp)
        if not (isinstance(slide, tuple) and len(slide) == 2):
            raise PredictionError("slide must be a path or an (image, mpp) pair, got {}".format(
                type(slide).__name__))
        image, mpp = np.asarray(slide[0]), _number("the slide's mpp", slide[1])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise PredictionError("slide image must be uint8 (H, W, 3) RGB, got {} {}".format(
                image.dtype, image.shape))
        if abs(mpp - self.target_mpp) > 1e-6 * self.target_mpp:
            image = rescale(image, mpp, self.target_mpp)
        return self._glass(image), float(mpp if level0_mpp is None else level0_mpp)

    def _glass(self, image):
        if self.glass_to_white is None:
            return image
        from data.glass import glass_to_white
        return glass_to_white(image, self.glass_to_white)

    def predict(self, slide, cam=False, level0_mpp=None, origin_xy=(0.0, 0.0)):
        """The ``Prediction`` of one slide: a path (read at target_mpp) or ``(image, mpp)``.

        ``level0_mpp``: µm per level-0 pixel of the slide the image comes from (default: the
        file's for a path, the image's own mpp for an array); ``origin_xy``: the level-0 pixel
        of the image's top-left corner ((0, 0) for a whole slide; a node crop's box corner).
        """
        image, level0_mpp = self.prepare(slide, level0_mpp)
        from model.cam import image_offset
        # Every strategy takes the Canvas: streaming never builds the padding, direct does.
        out = self.strategy.predict(to_canvas(image, self.canvas), cam=cam)
        return Prediction(probability=float(out["probability"]), logit=float(out["logit"]),
                          cam=np.asarray(out["cam"], np.float32) if cam else None,
                          image=image if cam else None, image_shape=tuple(image.shape[:2]),
                          offset=image_offset(image.shape, self.canvas), canvas=self.canvas,
                          target_mpp=self.target_mpp, level0_mpp=level0_mpp,
                          origin_xy=(float(origin_xy[0]), float(origin_xy[1])))


def predict_slide(checkpoint_or_model, slide, *, config=None, target_mpp=None, canvas=None,
                  strategy="auto", cam=False, level0_mpp=None, origin_xy=(0.0, 0.0)):
    """Probability and logit of one slide (and with ``cam=True`` its CAM and geometry).

    ``checkpoint_or_model``: a checkpoint path (``best.ckpt`` of ``fit``) or a Keras model.
    ``slide``: a slide file's path (read with ``data.read_slide`` at ``target_mpp``), or an
    already-read ``(uint8 (H, W, 3) image, mpp)`` pair (rescaled to ``target_mpp`` with the
    area filter when its mpp differs). ``config``: a YAML path or dict giving ``target_mpp``,
    ``canvas`` and the strategy's settings (see ``Predictor``). The image is put on the canvas
    here (centre-padded with white), as in training. Returns a ``Prediction``.
    For many slides, build one ``Predictor`` and call its ``predict``: this builds it anew.
    """
    predictor = Predictor(checkpoint_or_model, config=config, target_mpp=target_mpp,
                          canvas=canvas, strategy=strategy)
    return predictor.predict(slide, cam=cam, level0_mpp=level0_mpp, origin_xy=origin_xy)


def rescale(image, mpp, target_mpp):
    """``image`` at ``mpp`` µm/px resampled to ``target_mpp`` (cv2.INTER_AREA, data.slide's
    filter): each axis becomes max(1, round(n * mpp / target_mpp)) px."""
    import cv2
    f = float(mpp) / float(target_mpp)
    h, w = (max(1, int(round(n * f))) for n in image.shape[:2])
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def to_canvas(image, canvas):
    """The model's input for ``image``, exactly as evaluation in training builds it:
    centre-cropped to at most canvas x canvas (with a warning), centre-padded with white
    (``data.canvas.place``: a ``Canvas`` whose padding is never materialised)."""
    from data.canvas import place
    return place(image, canvas)


# --------------------------------------------------------------------------- a manifest's rows

SUBGROUP_COLUMNS = ("level", "size_category", "subtype", "chemo")


def select_rows(manifest, split):
    """Rows of ``split`` ('all' = every row), in manifest order; PredictionError when none."""
    rows = manifest if split == "all" else manifest[manifest["split"].astype(str) == split]
    if len(rows) == 0:
        raise PredictionError("manifest has no rows with split == {!r}".format(split))
    return rows.reset_index(drop=True)


def _value(row, column, default=None):
    if column not in row.index:
        return default
    v = row[column]
    try:
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "":
            return default
    except TypeError:
        pass
    return v


def node_origin(row, base_dir):
    """Level-0 (x, y) of the node crop's bounding box (data.nodes); (0, 0) for whole slides."""
    from data.manifest import resolve
    ann = _value(row, "annotation")
    if _value(row, "level", "slide") != "node" or ann is None:
        return (0.0, 0.0)
    from data.nodes import bounding_box, load_polygons
    x0, y0, _, _ = bounding_box(load_polygons(resolve(base_dir, str(ann))))
    return (float(x0), float(y0))


def tumour_polygons(row, base_dir):
    """(tumour, within) of a row for the CAM's outlines and localisation: the polygons of its
    ``foci`` GeoJSON (tumour annotations in level-0 pixels; None when the column is absent or
    blank) and, for a node row, its ``annotation`` outline (the node; else None)."""
    from data.manifest import resolve
    from data.nodes import load_polygons
    foci = _value(row, "foci")
    if foci is None:
        return None, None
    tumour = load_polygons(resolve(base_dir, str(foci)))
    ann = _value(row, "annotation")
    within = None
    if _value(row, "level", "slide") == "node" and ann is not None:
        within = load_polygons(resolve(base_dir, str(ann)))
    return tumour, within


LOCALISATION_COLUMNS = ("slide_id", "level", "label", "threshold", "tumour_area", "cam_area",
                        "overlap_area", "tumour_covered", "cam_in_tumour")


def read_prepared(row, base_dir, target_mpp, resample="area"):
    """Prepared image of a row read from its slide (no cache): the whole slide, or the node's
    bounding box with everything outside its polygon white (data.nodes.crop_node)."""
    from data import read_slide
    from data.manifest import resolve
    from data.nodes import crop_node
    mpp = _value(row, "mpp")
    mpp = None if mpp is None else float(mpp)
    path = resolve(base_dir, str(row["path"]))
    ann = _value(row, "annotation")
    if _value(row, "level", "slide") == "node" and ann is not None:
        return crop_node(path, resolve(base_dir, str(ann)), target_mpp, mpp=mpp,
                         resample=resample)
    return read_slide(path, target_mpp, mpp=mpp, resample=resample)


def level0_mpp_of(row, base_dir, index_row=None):
    """µm per level-0 pixel of the row's slide: the cache's record of it, else the manifest
    override, else the slide file's."""
    from data.manifest import resolve
    if index_row is not None and _value(index_row, "slide_mpp") is not None:
        return float(index_row["slide_mpp"])
    mpp = _value(row, "mpp")
    if mpp is not None:
        return float(mpp)
    from data.slide import slide_info
    return float(slide_info(resolve(base_dir, str(row["path"])))["mpp_x"])


def cohort_inputs(manifest, config, split="test", cache=None):
    """(config, rows, cache_dir, index) for predicting ``split`` of ``manifest``, all checked
    before TensorFlow loads: the manifest (``data.manifest.validate``: every slide opened), and
    the cache -- ``cache`` or, when None, the config's data.cache if it holds an index.csv; None
    means reading the slides -- made at the config's target mpp and filter, holding every row."""
    from data import manifest as manifest_mod
    from model.config import load_config

    if not os.path.isfile(manifest):
        raise PredictionError("{}: manifest not found".format(manifest))
    cfg = load_config(config, overrides={"data.manifest": manifest})
    df = manifest_mod.load_manifest(manifest)
    problems = manifest_mod.validate(df, os.path.dirname(os.path.abspath(manifest)))
    if problems:
        raise PredictionError("{}: {} problem(s): {}".format(manifest, len(problems),
                                                             "; ".join(problems)))
    rows = select_rows(df, split)
    cache_dir = cache
    if cache_dir is None and os.path.isfile(os.path.join(cfg["data"]["cache"], "index.csv")):
        cache_dir = cfg["data"]["cache"]
    index = None
    if cache_dir is not None:
        from data import cache as cache_mod
        if not os.path.isfile(os.path.join(cache_dir, "index.csv")):
            raise PredictionError("{}: no index.csv (run reproduce prepare first)".format(
                cache_dir))
        index = cache_mod.load_index(cache_dir)
        index = index.set_index(index["slide_id"].astype(str), drop=False)
        cache_mod.check_made_with(index, cache_dir, cfg["data"]["target_mpp"],
                                  cfg["data"].get("resample"),
                                  glass_to_white=cfg["data"].get("glass_to_white"))
        missing = [s for s in rows["slide_id"].astype(str) if s not in index.index]
        if missing:
            raise PredictionError("{}: {} row(s) of the manifest are not prepared (e.g. {}); "
                                  "run reproduce prepare".format(cache_dir, len(missing),
                                                                 missing[0]))
    return cfg, rows, cache_dir, index


def predict_cohort(checkpoint_or_model, manifest, config, split="test", cache=None,
                   strategy="auto", cam_dir=None, cam_threshold=0.5, cam_downsample=1,
                   cam_tiff=False, limit_cams=None, progress=True):
    """Predictions of a manifest's ``split`` as a DataFrame (slide_id, probability, label, level
    and the manifest's size_category, subtype, chemo): the input of ``reproduce table``.

    Each row's prepared image comes from the cache (``cohort_inputs``) or its slide (a node
    cropped by its polygon) and goes through ``Predictor.predict``. With ``cam_dir`` the CAM of
    each row (the first ``limit_cams``) is exported there (model.cam.export_prediction); a row
    with tumour annotations (a ``foci`` GeoJSON) gets their outlines on its overlay, and its
    localisation figures (stats.localisation, at ``cam_threshold``; areas in level-0 px^2) go to
    ``cam_dir``/localisation.csv, one line per annotated row (LOCALISATION_COLUMNS).
    Returns (predictions, list of the CAM exports' {kind: path}).
    """
    import pandas as pd
    from tqdm import tqdm

    if cam_downsample < 1:
        raise PredictionError("cam downsample must be >= 1, got {}".format(cam_downsample))
    if not 0.0 < cam_threshold < 1.0:
        raise PredictionError("cam threshold must be in (0, 1), got {}".format(cam_threshold))
    if isinstance(checkpoint_or_model, (str, os.PathLike)) and \
            not os.path.isfile(checkpoint_or_model):   # before the manifest's slides are opened
        from model.checkpoint import CheckpointError
        raise CheckpointError("{}: checkpoint not found".format(checkpoint_or_model))
    cfg, rows, cache_dir, index = cohort_inputs(manifest, config, split, cache)
    base_dir = os.path.dirname(os.path.abspath(manifest))
    predictor = Predictor(checkpoint_or_model, config=cfg, strategy=strategy)

    from data import cache as cache_mod
    from model import cam as cam_mod
    records, cams, found = [], [], []
    columns = ["slide_id", "probability", "label", "level"] + [
        c for c in SUBGROUP_COLUMNS[1:] if c in rows.columns]
    for k, row in tqdm(list(rows.iterrows()), desc="predict", unit="slide",
                       disable=not progress):
        sid = str(row["slide_id"])
        index_row = None if index is None else index.loc[sid]
        try:
            if index_row is not None:
                image = cache_mod.read_cached(cache_dir, index_row)
            else:
                image = read_prepared(row, base_dir, predictor.target_mpp, predictor.resample)
        except InputError as e:   # SlideError, CacheError, AnnotationError
            raise PredictionError("{}: {}".format(sid, e))
        want_cam = cam_dir is not None and (limit_cams is None or k < limit_cams)
        result = predictor.predict((image, predictor.target_mpp), cam=want_cam,
                                   level0_mpp=level0_mpp_of(row, base_dir, index_row),
                                   origin_xy=node_origin(row, base_dir))
        record = {"slide_id": sid, "probability": result.probability,
                  "label": int(row["label"]), "level": _value(row, "level", "slide")}
        for c in columns[4:]:
            record[c] = _value(row, c, "")
        records.append(record)
        if want_cam:
            try:
                tumour, within = tumour_polygons(row, base_dir)
            except InputError as e:   # AnnotationError
                raise PredictionError("{}: {}".format(sid, e))
            paths = cam_mod.export_prediction(
                result, cam_dir, sid, threshold=cam_threshold, downsample=cam_downsample,
                tiff=cam_tiff, label=row["label"], tumour=tumour, within=within)
            cams.append(paths)
            if paths["localisation"] is not None:
                found.append(dict(paths["localisation"], slide_id=sid, level=record["level"],
                                  label=record["label"]))
    if cam_dir is not None:
        table = os.path.join(cam_dir, "localisation.csv")
        if found:
            from data.files import atomic_write_csv
            atomic_write_csv(pd.DataFrame(found, columns=list(LOCALISATION_COLUMNS)), table)
        elif os.path.isfile(table):   # an earlier run's figures would pass for this one's
            os.remove(table)
    return pd.DataFrame(records, columns=columns), cams
