"""`python -m reproduce demo` (= `make reproduce-table`): the whole reproduction, end to end.

Four ways to run it:

* no --predictions, no --manifest: the embedded default on a SYNTHETIC cohort
      synth -> prepare -> train (mpirun -np N, Horovod) -> predict --cam (test split) -> table
      -> report (one self-contained HTML file: table, figures, CAM gallery, provenance)
* --manifest M.csv (with a real config, e.g. configs/paper.yaml): the same pipeline on your
  slides, from prepare on: the paper's own protocol;
* --predictions P.csv [--manifest M.csv]: only the table (and the report), from your
  predictions;
* --paper-scale: configs/paper.yaml itself (weights none, step counts cut) at 21,500^2 on a
  synthetic cohort at 2.28 um/px, with stage timings and peak memory (reproduce/paper_scale.py).

The stages, their printed command lines, stamps and resumption: ``report.run``.
"""
import shlex

from model.paper_config import SLIDES as PAPER_SCALE_SLIDES
from report.run import Runner, synth_command
from reproduce import paper_scale
from reproduce.errors import UserError

# The synthetic cohort of the embedded default: small enough for ten minutes on two CPU cores,
# with every size category (macro, micro, ITC) and subtype among the positives.
SYNTH_SLIDES = 100
SYNTH_SEED = 7
# 4 um/px level 0 (10x-like) renders fast and is still 4x finer than the demo's target mpp;
# --paper-scale renders at its config's target mpp (2.28 um/px, the paper's scale).
SYNTH_MPP = 4.0
DEMO_CONFIG = "configs/demo.yaml"


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="everything goes here (default: %(default)s)")
    parser.add_argument("--np", type=int, default=2, metavar="N",
                        help="training ranks for mpirun (default: %(default)s)")
    parser.add_argument("--config", metavar="C.yaml", help="training config (default: {}; "
                        "--paper-scale derives its own from configs/paper.yaml)".format(
                            DEMO_CONFIG))
    parser.add_argument("--predictions", metavar="P.csv",
                        help="only make the table from these predictions")
    parser.add_argument("--manifest", metavar="M.csv", help="your cohort instead of the "
                        "synthetic one (or, with --predictions, the subgroup columns)")
    parser.add_argument("--slides", type=int, help="synthetic cohort size (default: {}; "
                        "--paper-scale: {})".format(SYNTH_SLIDES, PAPER_SCALE_SLIDES))
    parser.add_argument("--seed", type=int, default=SYNTH_SEED,
                        help="synthetic cohort seed (default: %(default)s)")
    for stage in ("synth", "train"):
        parser.add_argument("--{}-args".format(stage), default="", metavar="'ARGS'",
                            help="extra arguments for `reproduce {}` (quoted)".format(stage))
    parser.add_argument("--mpirun", default="mpirun --allow-run-as-root --oversubscribe",
                        help="launcher prefix; -np N is appended (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="ignore stamps: rerun every stage")
    paper_scale.add_arguments(parser)


def run(args):
    if args.np < 1:
        raise UserError("--np must be >= 1, got {}".format(args.np))
    runner = Runner(args.out, force=args.force)
    # --paper-scale: checks its flags, writes OUT/paper-scale.yaml and points args.config at it
    scale = paper_scale.setup(args)
    args.config = args.config or DEMO_CONFIG
    if args.predictions:
        runner.tabulate(args.predictions, args.manifest, trained=False)
        return 0
    from model.config import check_world_size, load_config
    cfg = load_config(args.config, overrides={"out": runner.paths["train"]})  # before any work
    check_world_size(cfg, args.np)
    slides = SYNTH_SLIDES if args.slides is None else args.slides
    synth = synth_command(runner.paths["cohort"], slides, args.seed,
                          getattr(args, "synth_mpp", SYNTH_MPP), args.synth_args)
    manifest, title = runner.cohort(args.manifest, synth, scale.title if scale else None)
    launcher = shlex.split(args.mpirun) + ["-np", str(args.np)]
    predictions = runner.train_and_predict(manifest, args.config, cfg["data"]["target_mpp"],
                                           launcher, args.train_args)
    runner.tabulate(predictions, manifest, args.config, title)
    if scale:
        scale.finish(runner)
    return 0
