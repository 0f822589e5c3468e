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

The input -- target mpp, canvas, resampling filter, glass threshold -- is the checkpoint's own
input contract where it has one (model/checkpoint.py), so no config is needed to predict with
it. The model runs in the mode the process is in: eager, or TF1's default graph mode for a
model built there (model/runner.py).

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


def _is_path(checkpoint_or_model):
    return isinstance(checkpoint_or_model, (str, bytes, os.PathLike))


def _load_model(checkpoint_or_model):
    if _is_path(checkpoint_or_model):
        from model.checkpoint import load_for_inference
        return load_for_inference(os.fspath(checkpoint_or_model))
    return checkpoint_or_model


def _input_contract(checkpoint_or_model, cfg, arguments):
    """(contract, notice): the input the model was trained for, after the config ``cfg`` and the
    ``arguments`` (data.target_mpp, data.canvas) are checked against it -- a checkpoint path's
    (``model.checkpoint.checkpoint_input``: the notice is its line about an older checkpoint), a
    model's ``input_contract`` (set by ``load_for_inference``), else None (a model built here:
    the config and the arguments give the input)."""
    from model import checkpoint
    if _is_path(checkpoint_or_model):
        contract, _, notice = checkpoint.checkpoint_input(os.fspath(checkpoint_or_model), cfg,
                                                          arguments)
        return contract, notice
    contract = getattr(checkpoint_or_model, "input_contract", None)
    if contract is not None:
        name = getattr(checkpoint_or_model, "checkpoint_path", None) or "the model"
        checkpoint.check_given(name, contract, cfg, arguments)
    return contract, None


def _input_settings(contract, cfg, arguments):
    """data.target_mpp, canvas, resample, glass_to_white (as a dict without the ``data.``):
    the contract's, else the config's with the arguments overriding it."""
    from model.checkpoint import CONFIG_KEYS
    if contract is not None:
        return {key.split(".", 1)[1]: contract[key] for key in CONFIG_KEYS}
    data = dict(cfg["data"]) if cfg is not None else {}
    data.update({key.split(".", 1)[1]: v for key, v in arguments.items() if v is not None})
    if "target_mpp" not in data:
        raise PredictionError("predict: target_mpp is needed (or a config with "
                              "data.target_mpp)")
    if "canvas" not in data:
        raise PredictionError("predict: canvas is needed (or a config with data.canvas)")
    return data


class Predictor(object):
    """A model on a strategy and a canvas, ready for ``predict(slide)`` again and again.

    ``checkpoint_or_model``: a checkpoint path (``best.ckpt``) or a Keras model of
    ``model.resnet.build_model``, run in the mode the process is in (eager, or TF1's default
    graph mode: model/runner.py). The input -- ``data.target_mpp``, ``data.canvas``,
    ``data.resample``, ``data.glass_to_white`` -- is the checkpoint's input contract
    (model/checkpoint.py) when it has one: a ``config`` (a YAML path, dict or loaded config) or
    explicit ``target_mpp``/``canvas`` that contradict it are refused (CheckpointError naming
    both values). A checkpoint without one takes its input from the config it records, else from
    ``config`` and the arguments, and prints a one-line notice saying which; a Keras model built
    here takes it from ``config``, explicit ``target_mpp``/``canvas`` overriding it (without a
    config both are required). The config also gives ``train.tile``/``memory_gb`` and, when
    ``strategy`` is 'auto', ``train.strategy``.
    """

    def __init__(self, checkpoint_or_model, config=None, target_mpp=None, canvas=None,
                 strategy="auto"):
        from model.strategy import NAMES
        cfg = _config(config)
        train = cfg["train"] if cfg is not None else {}
        arguments = {"data.target_mpp": target_mpp, "data.canvas": canvas}
        contract, notice = _input_contract(checkpoint_or_model, cfg, arguments)
        data = _input_settings(contract, cfg, arguments)
        self.target_mpp = _number("target_mpp", data["target_mpp"])
        canvas = data["canvas"]
        if not (isinstance(canvas, (int, np.integer)) and canvas >= 32):
            raise PredictionError("canvas must be an integer of at least 32 px, got {!r}".format(
                canvas))
        self.canvas = int(canvas)
        self.resample = data.get("resample") or "area"
        # prepare --glass-to-white (not the paper's): a slide read here gets the same rewrite
        # as the cached images the model was trained on.
        from data.glass import check_threshold
        self.glass_to_white = check_threshold(data.get("glass_to_white"), "data.glass_to_white")
        if strategy == "auto" and train.get("strategy"):
            strategy = train["strategy"]
        if strategy not in NAMES:
            raise PredictionError("strategy must be one of {}, not {!r}".format(
                ", ".join(NAMES), strategy))

        from data.mpi import rank
        from model.strategy import check_memory, make_strategy

        def say(line):
            if rank() == 0:
                print(line, file=sys.stderr, flush=True)
        check_memory(strategy, self.canvas, training=False)   # before the checkpoint is read
        self.model = _load_model(checkpoint_or_model)
        if notice:   # once the checkpoint has loaded: a damaged file is its one error line
            say("note: " + notice)
        self.strategy = make_strategy(
            strategy, self.model, tile=train.get("tile"), memory_gb=train.get("memory_gb"),
            canvas=self.canvas, training=False, mpp=self.target_mpp, log=say)

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

    ``checkpoint_or_model``: a checkpoint path (``best.ckpt`` of ``fit``) or a Keras model,
    built eagerly or in TF1's default graph mode (it runs in the mode it was built in).
    ``slide``: a slide file's path (read with ``data.read_slide`` at ``target_mpp``), or an
    already-read ``(uint8 (H, W, 3) image, mpp)`` pair (rescaled to ``target_mpp`` with the
    area filter when its mpp differs). A checkpoint brings its own ``target_mpp``, ``canvas``
    and filter (its input contract); a ``config`` (a YAML path or dict) then only gives the
    strategy's settings, and it, ``target_mpp`` or ``canvas`` must not contradict the
    checkpoint. A Keras model built here needs them given (see ``Predictor``). The image is put
    on the canvas here (centre-padded with white), as in training. Returns a ``Prediction``.
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


# ------------------------------------------- a manifest's rows (their readers: data/rows.py)

LOCALISATION_COLUMNS = ("slide_id", "level", "label", "threshold", "tumour_area", "cam_area",
                        "overlap_area", "tumour_covered", "cam_in_tumour")


def cohort_inputs(manifest, config, split="test", cache=None):
    """(config, rows, cache_dir, index) for predicting ``split`` of ``manifest``, all checked
    before TensorFlow loads: the manifest (``data.manifest.validate``: every slide opened), and
    the cache -- ``cache`` or, when None, the config's data.cache if it holds an index.csv; None
    means reading the slides -- made at the config's target mpp and filter, holding every row."""
    from data import manifest as manifest_mod
    from data.rows import select_rows
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
    configured = cfg["data"]["cache"]
    if cache_dir is None and configured and os.path.isfile(os.path.join(configured, "index.csv")):
        cache_dir = configured
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


def cohort_config(checkpoint, manifest, config=None, out=None):
    """The config to predict ``manifest`` with, before any slide is opened: ``config``, refused
    when its input contradicts the checkpoint's; else, for a checkpoint with an input contract,
    that contract (``model.checkpoint.contract_config``, ``out`` its run folder); else the config
    an older checkpoint records."""
    from model.checkpoint import checkpoint_input, contract_config
    if not os.path.isfile(manifest):   # before the config, which takes it as data.manifest
        raise PredictionError("{}: manifest not found".format(manifest))
    contract, cfg, _ = checkpoint_input(checkpoint, config, overrides={"data.manifest": manifest})
    return cfg if cfg is not None else contract_config(contract, out)


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
    from data.rows import SUBGROUP_COLUMNS, level0_mpp_of, node_origin

    _check_cohort_arguments(checkpoint_or_model, cam_threshold, cam_downsample)
    cfg, rows, cache_dir, index = cohort_inputs(manifest, config, split, cache)
    base_dir = os.path.dirname(os.path.abspath(manifest))
    predictor = Predictor(checkpoint_or_model, config=cfg, strategy=strategy)
    cam = dict(threshold=cam_threshold, downsample=cam_downsample, tiff=cam_tiff)
    records, cams, found = [], [], []
    columns = ["slide_id", "probability", "label", "level"] + [
        c for c in SUBGROUP_COLUMNS[1:] if c in rows.columns]
    for k, row in tqdm(list(rows.iterrows()), desc="predict", unit="slide",
                       disable=not progress):
        index_row = None if index is None else index.loc[str(row["slide_id"])]
        image = _row_image(row, base_dir, cache_dir, index_row, predictor)
        want_cam = cam_dir is not None and (limit_cams is None or k < limit_cams)
        result = predictor.predict((image, predictor.target_mpp), cam=want_cam,
                                   level0_mpp=level0_mpp_of(row, base_dir, index_row),
                                   origin_xy=node_origin(row, base_dir))
        records.append(_prediction_record(row, result.probability, columns))
        if want_cam:
            paths, line = _export_cam(result, row, records[-1], base_dir, cam_dir, cam)
            cams.append(paths)
            if line is not None:
                found.append(line)
    if cam_dir is not None:
        _write_localisation(cam_dir, found)
    return pd.DataFrame(records, columns=columns), cams


def _check_cohort_arguments(checkpoint_or_model, cam_threshold, cam_downsample):
    """One-line errors for the CAM options and a missing checkpoint file, before the manifest's
    slides are opened."""
    if cam_downsample < 1:
        raise PredictionError("cam downsample must be >= 1, got {}".format(cam_downsample))
    if not 0.0 < cam_threshold < 1.0:
        raise PredictionError("cam threshold must be in (0, 1), got {}".format(cam_threshold))
    if isinstance(checkpoint_or_model, (str, os.PathLike)) and \
            not os.path.isfile(checkpoint_or_model):
        from model.checkpoint import CheckpointError
        raise CheckpointError("{}: checkpoint not found".format(checkpoint_or_model))


def _row_image(row, base_dir, cache_dir, index_row, predictor):
    """A row's prepared image: the cache's when there is one (``index_row``), else read from its
    slide at the predictor's mpp and filter. Errors name the row's slide_id."""
    from data.cache import read_cached
    from data.rows import read_prepared
    try:
        if index_row is not None:
            return read_cached(cache_dir, index_row)
        return read_prepared(row, base_dir, predictor.target_mpp, predictor.resample)
    except InputError as e:   # SlideError, CacheError, AnnotationError
        raise PredictionError("{}: {}".format(str(row["slide_id"]), e))


def _prediction_record(row, probability, columns):
    """A row's line of the predictions table: ``columns`` from slide_id, the probability, the
    label and the level to the manifest's subgroup cells (blank: '')."""
    from data.rows import cell
    record = {"slide_id": str(row["slide_id"]), "probability": probability,
              "label": int(row["label"]), "level": cell(row, "level", "slide")}
    for c in columns[4:]:
        record[c] = cell(row, c, "")
    return record


def _export_cam(result, row, record, base_dir, cam_dir, cam):
    """Writes a row's CAM into ``cam_dir`` (with the outlines of its ``foci`` when it has them;
    ``cam``: threshold, downsample, tiff). Returns (the export's {kind: path}, the row's line of
    localisation.csv or None)."""
    from data.rows import tumour_polygons
    from model.cam import export_prediction
    sid = record["slide_id"]
    try:
        tumour, within = tumour_polygons(row, base_dir)
    except InputError as e:   # AnnotationError
        raise PredictionError("{}: {}".format(sid, e))
    paths = export_prediction(result, cam_dir, sid, threshold=cam["threshold"],
                              downsample=cam["downsample"], tiff=cam["tiff"], label=row["label"],
                              tumour=tumour, within=within)
    if paths["localisation"] is None:
        return paths, None
    return paths, dict(paths["localisation"], slide_id=sid, level=record["level"],
                       label=record["label"])


def _write_localisation(cam_dir, found):
    """``cam_dir``/localisation.csv of the annotated rows; none at all when no row has
    annotations (an earlier run's figures would pass for this one's)."""
    import pandas as pd
    table = os.path.join(cam_dir, "localisation.csv")
    if found:
        from data.files import atomic_write_csv
        atomic_write_csv(pd.DataFrame(found, columns=list(LOCALISATION_COLUMNS)), table)
    elif os.path.isfile(table):
        os.remove(table)
