"""`python -m reproduce demo --paper-scale --out DIR`: configs/paper.yaml end to end on a CPU.

The paper's own configuration, on the paper's 21,500 x 21,500 px canvas at 2.28 um/px, from
synthetic slides to the table, on 2 ranks (mpirun) with the paper's augmentation:

    synth (full-resolution slides at 2.28 um/px) -> prepare -> train -> predict --cam -> table

The config that runs (DIR/paper-scale.yaml, its diff DIR/paper-scale.diff) and why these sizes:
``model.paper_config``. Stage timings and peak memory: DIR/timings.json (``report.run``).
"""
import os
import sys
import time

from model import paper_config as pc
from model.config import load_config
from report.stages import load_average
from reproduce.errors import UserError


def add_arguments(parser):
    group = parser.add_argument_group(
        "the paper's protocol at full scale (--paper-scale)",
        "configs/paper.yaml unchanged but for model.weights none (offline) and the step counts "
        "below, on synthetic 4.0 x 3.8 mm slides at 2.28 um/px (the paper's scale; the "
        "generator's smallest, still holding a > 2 mm macrometastasis, as a step's time follows "
        "the tissue's pixels) on the 21,500 px canvas; 2 ranks, augmentation on: the one update "
        "of 8 slides took 3.7 min on 2 CPU cores, the whole run 4.9 min (README, "
        "'The paper's protocol at full scale').")
    group.add_argument("--paper-scale", action="store_true",
                       help="run configs/paper.yaml end to end at 21,500^2 (writes the config "
                            "that ran to OUT/paper-scale.yaml, the stage timings and peak "
                            "memory to OUT/timings.json)")
    group.add_argument("--iterations", type=int, metavar="N", help="train.iterations_per_epoch "
                       "(default {}; the paper: 88)".format(pc.ITERATIONS))
    group.add_argument("--epochs", type=int, metavar="N", help="train.max_epochs (default {}; "
                       "the paper: until its schedule stops)".format(pc.EPOCHS))
    group.add_argument("--canvas", type=int, metavar="PX",
                       help="data.canvas in px at 2.28 um/px (default: the paper's 21500; "
                            "smaller for tests: translate_px then shrinks in proportion)")


def _refuse_flags(args):
    """The flags that --paper-scale needs, without it; those it replaces, with it."""
    if not args.paper_scale:
        pairs, text = (("--iterations", args.iterations), ("--epochs", args.epochs),
                       ("--canvas", args.canvas)), "only with --paper-scale"
    else:
        pairs = (("--config", args.config), ("--manifest", args.manifest),
                 ("--predictions", args.predictions))
        text = "not with --paper-scale (it runs configs/paper.yaml on its own synthetic cohort)"
    given = [flag for flag, value in pairs if value is not None]
    if given:
        raise UserError("{}: {}".format(given[0], text))


def setup(args):
    """For ``demo --paper-scale``: checks the flags, writes OUT/paper-scale.yaml and its diff,
    prints both and the memory plan, and points ``args`` at that config and the synthetic
    cohort's settings (full resolution at the config's mpp, node-sized slides). Returns a
    ``PaperScale``, or None without --paper-scale (after refusing its flags alone)."""
    _refuse_flags(args)
    if not args.paper_scale:
        return None
    args.slides = pc.SLIDES if args.slides is None else args.slides
    config, changes, title = pc.write_run_config(args.out, args.np, args.slides, args.seed,
                                                 args.canvas, args.iterations, args.epochs)
    cfg = load_config(config)
    plan = pc.memory_plan(cfg, args.np)
    print("[demo] paper scale: {} -> {}; only these keys differ ({}):".format(
        pc.relative(pc.PAPER_CONFIG), config, os.path.join(args.out, pc.DIFF)))
    print("\n".join(pc.change_lines(changes)))
    print("[demo] memory: strategy {} -> {}; host RAM {} GB, {} training ranks".format(
        cfg["train"]["strategy"], plan["strategy"], plan["host_ram_gb"], args.np))
    for line in pc.plan_lines(plan):
        print(line)
    args.synth_mpp, args.config = cfg["data"]["target_mpp"], config
    args.synth_args = "--width-mm {:g} --height-mm {:g} {}".format(
        pc.SLIDE_MM[0], pc.SLIDE_MM[1], args.synth_args).strip()
    return PaperScale(config, changes, plan, title)


class PaperScale(object):
    """A --paper-scale run's settings and records: ``setup`` makes it, ``finish`` reports."""

    def __init__(self, config, changes, plan, title):
        self.config, self.changes, self.plan, self.title = config, changes, plan, title
        self.started, self.load_start = time.time(), load_average()

    def finish(self, runner):
        """Prints the stage timings and peak memory, and writes them to OUT/timings.json."""
        command = " ".join([os.path.basename(sys.executable), "-m", "reproduce"] + sys.argv[1:])
        return runner.record_timings(self.started, self.load_start, command=command,
                                     config=self.config, changed=self.changes,
                                     memory_plan=self.plan)
