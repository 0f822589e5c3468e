"""`python -m reproduce predict`: probabilities for slides and single nodes, and their CAMs.

For every manifest row of the chosen split (slide-level and node-level rows alike) the prepared
image at the config's target mpp (from the cache when given, else read from the slide, a node
cropped by its polygon) is put on the model's canvas exactly as in training (centre-padded with
white, or centre-cropped), and the best checkpoint's strategy gives

    probability = sigmoid(logit),  logit = head(GAP(F))

Writes DIR/predictions.csv (slide_id, probability, label, level + size_category, subtype,
chemo where the manifest has them; the input of `reproduce table`) and, with --cam, the CAM of
each row under DIR/cam/ (reproduce/cam.py: PNG overlay, GeoJSON of high-CAM regions in level-0
slide pixels, optionally a TIFF).
"""
import os
import sys

import numpy as np

from data.files import atomic_write_csv
from reproduce.errors import UserError

SUBGROUP_COLUMNS = ("level", "size_category", "subtype", "chemo")


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="best.ckpt of a training run (reproduce train)")
    parser.add_argument("--manifest", required=True, metavar="M.csv",
                        help="cohort manifest: slide_id, path, label, split [, level, annotation, "
                             "mpp, size_category, subtype, chemo]")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes predictions.csv here (and cam/ with --cam)")
    parser.add_argument("--config", default="configs/demo.yaml", metavar="C.yaml",
                        help="the training config: target_mpp, canvas, strategy, tile "
                             "(default: %(default)s)")
    parser.add_argument("--cache", metavar="CACHE",
                        help="prepared images (reproduce prepare); default: the config's "
                             "data.cache when it holds an index.csv, else read the slides")
    parser.add_argument("--split", default="test",
                        help="manifest split to predict: train, val, test or all "
                             "(default: %(default)s)")
    parser.add_argument("--strategy", choices=("auto", "direct", "streaming", "unified"),
                        help="override the config's train.strategy")
    parser.add_argument("--cam", action="store_true", help="export CAMs under DIR/cam/")
    parser.add_argument("--cam-threshold", type=float, default=0.5,
                        help="sigmoid CAM value from which a region is exported and drawn "
                             "(default: %(default)s)")
    parser.add_argument("--cam-downsample", type=int, default=1,
                        help="CAM maps at target_mpp x this (1 = full prepared size; use 4 "
                             "for paper-sized slides) (default: %(default)s)")
    parser.add_argument("--cam-tiff", action="store_true", help="also write the CAM as a TIFF")
    parser.add_argument("--limit-cams", type=int, default=None, metavar="N",
                        help="export CAMs for the first N rows only")


# --------------------------------------------------------------------------- inputs

def select_rows(manifest, split):
    """Rows of ``split`` ('all' = every row), in manifest order; UserError when none."""
    if split == "all":
        rows = manifest
    else:
        rows = manifest[manifest["split"].astype(str) == split]
    if len(rows) == 0:
        raise UserError("manifest has no rows with split == {!r}".format(split))
    return rows.reset_index(drop=True)


def load_inputs(args):
    """Config, manifest rows and the cache index: everything checked before TensorFlow loads."""
    from reproduce.config import load_config
    from data import manifest as manifest_mod

    if not os.path.isfile(args.manifest):
        raise UserError("{}: manifest not found".format(args.manifest))
    cfg = load_config(args.config, overrides={"data.manifest": args.manifest})
    if not os.path.isfile(args.checkpoint):
        raise UserError("{}: checkpoint not found".format(args.checkpoint))
    try:
        df = manifest_mod.load_manifest(args.manifest)
    except (OSError, ValueError) as e:
        raise UserError("{}: {}".format(args.manifest, e))
    problems = manifest_mod.validate(df, os.path.dirname(os.path.abspath(args.manifest)))
    if problems:
        raise UserError("{}: {} problem(s): {}".format(args.manifest, len(problems),
                                                       "; ".join(problems)))
    rows = select_rows(df, args.split)
    cache_dir = args.cache
    if cache_dir is None and os.path.isfile(os.path.join(cfg["data"]["cache"], "index.csv")):
        cache_dir = cfg["data"]["cache"]
    index = None
    if cache_dir is not None:
        from data import cache as cache_mod
        if not os.path.isfile(os.path.join(cache_dir, "index.csv")):
            raise UserError("{}: no index.csv (run reproduce prepare first)".format(cache_dir))
        try:
            index = cache_mod.load_index(cache_dir)
        except (cache_mod.CacheError, ValueError) as e:
            raise UserError(str(e))
        index = index.set_index(index["slide_id"].astype(str), drop=False)
        target = float(cfg["data"]["target_mpp"])
        off = index[(index["mpp"] - target).abs() > 1e-6 * target]
        if len(off):
            raise UserError("{}: prepared at {} um/px but {} says data.target_mpp: {} (rerun "
                            "prepare with --target-mpp {})".format(
                                cache_dir, off["mpp"].iloc[0], args.config, target, target))
        missing = [s for s in rows["slide_id"].astype(str) if s not in index.index]
        if missing:
            raise UserError("{}: {} row(s) of the manifest are not prepared (e.g. {}); run "
                            "reproduce prepare".format(cache_dir, len(missing), missing[0]))
    return cfg, rows, cache_dir, index


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


def _resolve(path, base_dir):
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def node_origin(row, base_dir):
    """Level-0 (x, y) of the node crop's bounding box (data.nodes); (0, 0) for whole slides."""
    ann = _value(row, "annotation")
    if _value(row, "level", "slide") != "node" or ann is None:
        return (0.0, 0.0)
    from data.nodes import bounding_box, load_polygons
    x0, y0, _, _ = bounding_box(load_polygons(_resolve(str(ann), base_dir)))
    return (float(x0), float(y0))


def read_prepared(row, base_dir, target_mpp):
    """Prepared image of a row read from its slide (no cache): the whole slide, or the node's
    bounding box with everything outside its polygon white (data.nodes.crop_node)."""
    from data import read_slide
    from data.nodes import crop_node
    mpp = _value(row, "mpp")
    path = _resolve(str(row["path"]), base_dir)
    ann = _value(row, "annotation")
    if _value(row, "level", "slide") == "node" and ann is not None:
        return crop_node(path, _resolve(str(ann), base_dir), target_mpp, mpp=mpp)
    return read_slide(path, target_mpp, mpp=mpp)


def to_canvas(image, canvas):
    """The model's input, exactly as evaluation in training builds it (data.augment.pad_to_canvas):
    centre-cropped to at most canvas x canvas (with a warning), centre-padded with white."""
    from data.augment import pad_to_canvas
    return pad_to_canvas(image, canvas)


def level0_mpp_of(row, base_dir, index_row=None):
    """µm per level-0 pixel of the row's slide: the cache's record of it, else the manifest
    override, else the slide file's."""
    if index_row is not None and _value(index_row, "slide_mpp") is not None:
        return float(index_row["slide_mpp"])
    mpp = _value(row, "mpp")
    if mpp is not None:
        return float(mpp)
    from data.slide import slide_info
    return float(slide_info(_resolve(str(row["path"]), base_dir))["mpp_x"])


# --------------------------------------------------------------------------- outputs

def prediction_columns(rows):
    return ["slide_id", "probability", "label", "level"] + [
        c for c in SUBGROUP_COLUMNS[1:] if c in rows.columns]


# --------------------------------------------------------------------------- run

def run(args):
    import pandas as pd
    from tqdm import tqdm

    if args.cam_downsample < 1:
        raise UserError("--cam-downsample must be >= 1, got {}".format(args.cam_downsample))
    if not 0.0 < args.cam_threshold < 1.0:
        raise UserError("--cam-threshold must be in (0, 1), got {}".format(args.cam_threshold))
    cfg, rows, cache_dir, index = load_inputs(args)
    base_dir = os.path.dirname(os.path.abspath(args.manifest))
    target_mpp, canvas = float(cfg["data"]["target_mpp"]), int(cfg["data"]["canvas"])

    from data import SlideError
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model.checkpoint import CheckpointError, load_for_inference
    from model.strategy import make_strategy
    try:
        model = load_for_inference(args.checkpoint)
    except CheckpointError as e:
        raise UserError(str(e))
    name = args.strategy or cfg["train"]["strategy"]
    strategy = make_strategy(name, model, tile=cfg["train"]["tile"],
                             memory_gb=cfg["train"]["memory_gb"])

    cam_dir = os.path.join(args.out, "cam")
    out_rows, cams = [], []
    for k, row in tqdm(list(rows.iterrows()), desc="predict", unit="slide", file=sys.stderr):
        sid = str(row["slide_id"])
        index_row = None if index is None else index.loc[sid]
        try:
            if index_row is not None:
                from data import cache as cache_mod
                image = cache_mod.read_cached(cache_dir, index_row)
            else:
                image = read_prepared(row, base_dir, target_mpp)
        except (SlideError, ValueError) as e:   # SlideError, CacheError, AnnotationError
            raise UserError("{}: {}".format(sid, e))
        want_cam = args.cam and (args.limit_cams is None or k < args.limit_cams)
        out = strategy.predict(to_canvas(image, canvas), cam=want_cam)
        level = _value(row, "level", "slide")
        record = {"slide_id": sid, "probability": float(out["probability"]),
                  "label": int(row["label"]), "level": level}
        for c in SUBGROUP_COLUMNS[1:]:
            if c in rows.columns:
                record[c] = _value(row, c, "")
        out_rows.append(record)
        if want_cam:
            from reproduce import cam as cam_mod
            paths = cam_mod.export(
                sid, image, out["cam"], canvas, out["probability"], cam_dir, target_mpp,
                level0_mpp_of(row, base_dir, index_row), origin_xy=node_origin(row, base_dir),
                threshold=args.cam_threshold, downsample=args.cam_downsample,
                tiff=args.cam_tiff, label=row["label"])
            cams.append(paths)
    predictions = pd.DataFrame(out_rows, columns=prediction_columns(rows))
    path = atomic_write_csv(predictions, os.path.join(args.out, "predictions.csv"))
    print("wrote {} ({} row(s))".format(path, len(predictions)))
    if cams:
        print("wrote {} CAM(s) to {} (PNG overlay, GeoJSON level-0 regions{})".format(
            len(cams), cam_dir, ", TIFF" if args.cam_tiff else ""))
    return 0
