"""`python -m reproduce predict`: probabilities for slides and single nodes, and their CAMs.

Every manifest row of the split (slides and nodes alike) goes through the Python API's code path,
``model.inference.predict_cohort``: its prepared image (cache, or slide; a node cropped by its
polygon) on the model's canvas as in training gives probability = sigmoid(head(GAP(F))). Writes
DIR/predictions.csv (the input of `reproduce table`) and, with --cam, each row's CAM under
DIR/cam/ (model/cam.py), the localisation of annotated rows in DIR/cam/localisation.csv. The
input (target mpp, canvas, filter, glass threshold) is the checkpoint's contract; --config gives
strategy, tile and default cache, refused when its input contradicts the checkpoint.
"""
import os

from data.files import atomic_write_csv
from model.strategy import NAMES as STRATEGIES
from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="best.ckpt of a training run (reproduce train)")
    parser.add_argument("--manifest", required=True, metavar="M.csv",
                        help="cohort manifest: slide_id, path, label, split [, level, annotation, "
                             "mpp, size_category, subtype, chemo]")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes predictions.csv here (and cam/ with --cam)")
    parser.add_argument("--config", metavar="C.yaml", help="a config for strategy, tile and "
                        "cache; its input (target_mpp, canvas, resample, glass_to_white) must "
                        "match the checkpoint's (default: its own input, defaults for the rest)")
    parser.add_argument("--cache", metavar="CACHE",
                        help="prepared images (reproduce prepare); default: the config's "
                             "data.cache when it holds an index.csv, else read the slides")
    parser.add_argument("--split", default="test",
                        help="manifest split to predict: train, val, test or all "
                             "(default: %(default)s)")
    parser.add_argument("--strategy", choices=STRATEGIES, help="override train.strategy")
    parser.add_argument("--cam", action="store_true", help="export CAMs under DIR/cam/")
    parser.add_argument("--cam-threshold", type=float, default=0.5,
                        help="sigmoid CAM value from which a region is exported, drawn and "
                             "counted as lit in the localisation figures (default: %(default)s)")
    parser.add_argument("--cam-downsample", type=int, default=1,
                        help="CAM maps at target_mpp x this (1 = full prepared size; use 4 "
                             "for paper-sized slides) (default: %(default)s)")
    parser.add_argument("--cam-tiff", action="store_true", help="also write the CAM as a TIFF")
    parser.add_argument("--limit-cams", type=int, metavar="N",
                        help="export CAMs for the first N rows only")


def run(args):
    if args.cam_downsample < 1:
        raise UserError("--cam-downsample must be >= 1, got {}".format(args.cam_downsample))
    if not 0.0 < args.cam_threshold < 1.0:
        raise UserError("--cam-threshold must be in (0, 1), got {}".format(args.cam_threshold))
    from model.inference import cohort_config, predict_cohort
    config = cohort_config(args.checkpoint, args.manifest, args.config, args.out)
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()   # the command runs eagerly, as training does
    cam_dir = os.path.join(args.out, "cam")
    predictions, cams = predict_cohort(
        args.checkpoint, args.manifest, config, split=args.split, cache=args.cache,
        strategy=args.strategy or "auto", cam_dir=cam_dir if args.cam else None,
        cam_threshold=args.cam_threshold, cam_downsample=args.cam_downsample,
        cam_tiff=args.cam_tiff, limit_cams=args.limit_cams)
    path = atomic_write_csv(predictions, os.path.join(args.out, "predictions.csv"))
    print("wrote {} ({} row(s))".format(path, len(predictions)))
    if cams:
        print("wrote {} CAM(s) to {} (PNG overlay, GeoJSON level-0 regions{})".format(
            len(cams), cam_dir, ", TIFF" if args.cam_tiff else ""))
    return 0

