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

Every stage is a subprocess whose command line is printed first, so any step can be rerun by
hand. A finished stage leaves a stamp file (OUT/.stamps/<stage>.json holding its command); a
rerun skips stages whose stamp matches the command it would run, and reruns the first stage
that changed and every stage after it. Training resumes from its own checkpoint anyway.
"""
import hashlib
import json
import os
import shlex
import sys
import time

from data.files import atomic_write_text
from reproduce import measure, paper_scale
from reproduce.errors import UserError

STAGES = ("synth", "prepare", "train", "predict", "table", "report")

# The synthetic cohort of the embedded default: small enough for ten minutes on two CPU cores,
# with every size category (macro, micro, ITC) and subtype among the positives.
SYNTH_SLIDES = 100
SYNTH_SEED = 7
SYNTH_MPP = 4.0
DEMO_CONFIG = "configs/demo.yaml"


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="everything goes here (default: %(default)s)")
    parser.add_argument("--np", type=int, default=2, metavar="N",
                        help="training ranks for mpirun (default: %(default)s)")
    parser.add_argument("--config", default=None, metavar="C.yaml",
                        help="training config (default: {}; --paper-scale derives its own from "
                             "configs/paper.yaml)".format(DEMO_CONFIG))
    parser.add_argument("--predictions", metavar="P.csv",
                        help="only make the table from these predictions")
    parser.add_argument("--manifest", metavar="M.csv",
                        help="your cohort instead of the synthetic one (or, with --predictions, "
                             "the subgroup columns)")
    parser.add_argument("--slides", type=int, default=None,
                        help="synthetic cohort size (default: {}; --paper-scale: {})".format(
                            SYNTH_SLIDES, paper_scale.SLIDES))
    parser.add_argument("--seed", type=int, default=SYNTH_SEED,
                        help="synthetic cohort seed (default: %(default)s)")
    parser.add_argument("--synth-args", default="", metavar="'ARGS'",
                        help="extra arguments for `reproduce synth` (quoted)")
    parser.add_argument("--train-args", default="", metavar="'ARGS'",
                        help="extra arguments for `reproduce train` (quoted)")
    parser.add_argument("--mpirun", default="mpirun --allow-run-as-root --oversubscribe",
                        help="launcher prefix; -np N is appended (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="ignore stamps: rerun every stage")
    paper_scale.add_arguments(parser)


# --------------------------------------------------------------------------- stages

def _py(*args):
    return [sys.executable, "-m", "reproduce"] + [str(a) for a in args]


class Runner:
    """Runs stages as subprocesses, printing each command, skipping stamped ones."""

    def __init__(self, out, force=False):
        self.out = out
        self.stamps = os.path.join(out, ".stamps")
        self.force = force
        self.changed = False     # once a stage reruns, all later stages rerun too
        self.timings = []
        self.memory = {}         # stage -> peak RSS (reproduce.measure.call)

    def _stamp(self, stage):
        return os.path.join(self.stamps, stage + ".json")

    @staticmethod
    def fingerprint(inputs):
        """sha256 of the input files' contents (a changed config or manifest reruns the stage)."""
        h = hashlib.sha256()
        for path in inputs or ():
            h.update(path.encode())
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    h.update(f.read())
        return h.hexdigest()

    def done(self, stage, command, inputs=None):
        if self.force or self.changed:
            return False
        try:
            with open(self._stamp(stage)) as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            return False
        return stamp.get("command") == command and \
            stamp.get("inputs") == self.fingerprint(inputs)

    def stage(self, stage, command, env=None, always=False, inputs=None, key=None, rerun=None):
        """Runs ``command`` unless its stamp says it ran with the same ``key`` (default: the
        command) and ``inputs``. ``rerun``: a function giving the command that continues the
        stage after a failure (default: ``command``), printed in the error so that it works."""
        printable = " ".join(shlex.quote(c) for c in command)
        key = command if key is None else key
        if not always and self.done(stage, key, inputs):
            print("[demo] {}: done before, skipped (stamp {})".format(stage, self._stamp(stage)),
                  flush=True)
            self.timings.append((stage, None))
            return
        self.changed = True
        print("\n[demo] {}:\n  {}".format(stage, printable), flush=True)
        t0 = time.time()
        merged = dict(os.environ)
        merged.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's C++ chatter (CUDA probing)
        merged.update(env or {})
        rc, memory = measure.call(command, env=merged)
        seconds = time.time() - t0
        self.memory[stage] = memory
        if rc != 0:
            again = command if rerun is None else rerun()
            raise UserError("demo stage '{}' failed (exit {}); rerun it with: {}".format(
                stage, rc, " ".join(shlex.quote(c) for c in again)))
        atomic_write_text(self._stamp(stage), json.dumps({
            "command": key, "inputs": self.fingerprint(inputs), "seconds": round(seconds, 1),
            "peak_rss_gb": memory["largest_gb"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self.timings.append((stage, seconds))
        print("[demo] {}: {:.0f} s, peak RSS {:.1f} GB (largest process), {:.1f} GB (all at "
              "once)".format(stage, seconds, memory["largest_gb"], memory["together_gb"]),
              flush=True)


def paths(out):
    return {
        "cohort": os.path.join(out, "cohort"),
        "manifest": os.path.join(out, "cohort", "manifest.csv"),
        "cache": os.path.join(out, "cache"),
        "train": os.path.join(out, "train"),
        "predict": os.path.join(out, "predict"),
        "table": os.path.join(out, "table"),
    }


def synth_command(args, p):
    # 4 um/px level 0 (10x-like) renders fast and is still 4x finer than the demo's target mpp;
    # --paper-scale renders at its config's target mpp (2.28 um/px, the paper's scale).
    return _py("synth", "--out", p["cohort"], "--slides", args.slides, "--seed", args.seed,
               "--mpp", getattr(args, "synth_mpp", SYNTH_MPP), "--compression", "zlib",
               *shlex.split(args.synth_args))


def prepare_command(args, manifest, cache, target_mpp):
    return _py("prepare", "--manifest", manifest, "--out", cache, "--target-mpp", target_mpp)


def train_command(args, manifest, cache, run_dir):
    launcher = shlex.split(args.mpirun) + ["-np", str(args.np)]
    return launcher + _py("train", "--config", args.config, "--manifest", manifest,
                          "--cache", cache, "--out", run_dir, *shlex.split(args.train_args))


def predict_command(args, manifest, cache, run_dir, out):
    return _py("predict", "--checkpoint", os.path.join(run_dir, "best.ckpt"), "--manifest",
               manifest, "--config", args.config, "--cache", cache, "--split", "test",
               "--out", out, "--cam")


def table_command(predictions, out, manifest=None, log=None, title=""):
    cmd = _py("table", "--predictions", predictions, "--out", out, "--title", title)
    if manifest:
        cmd += ["--manifest", manifest]
    if log and os.path.isfile(log):
        cmd += ["--log", log]
    return cmd


def report_command(out, predictions, manifest=None, config=None):
    cmd = _py("report", "--run", out, "--predictions", predictions)
    if manifest:
        cmd += ["--manifest", manifest]
    if config:
        cmd += ["--config", config]
    return cmd


def _report(runner, out, predictions, manifest=None, config=None):
    """The last stage: the self-contained HTML report (seconds; always rerun, like the table).
    Its path is the demo's last line."""
    runner.stage("report", report_command(out, predictions, manifest, config), always=True)
    print("\n[demo] report: {}  (one self-contained HTML file; open it in a browser)".format(
        os.path.abspath(os.path.join(out, "report.html"))), flush=True)


def _resumable(runner, command, inputs, run_dir):
    """An interrupted training of the same inputs is resumed (--resume); a run directory left
    by other inputs (another config or cohort) is moved aside, not mixed in."""
    if runner.done("train", command, inputs):
        return command
    marker = os.path.join(run_dir, ".demo-inputs")
    fingerprint = runner.fingerprint(inputs)
    if os.path.isfile(os.path.join(run_dir, "last.ckpt")):
        try:
            with open(marker) as f:
                same = f.read().strip() == fingerprint
        except OSError:
            same = False
        if same:
            return command + ["--resume"]
        aside = "{}.old-{}".format(run_dir, time.strftime("%Y%m%d-%H%M%S"))
        os.replace(run_dir, aside)
        print("[demo] train: {} held a run of other inputs; moved to {}".format(run_dir, aside))
    os.makedirs(run_dir, exist_ok=True)
    with open(marker, "w") as f:
        f.write(fingerprint)
    return command


def train_rerun(command, run_dir):
    """The command that continues a failed training: with ``--resume`` once the run directory
    holds a checkpoint (train refuses to start over on it), else the command itself."""
    def again():
        if "--resume" not in command and os.path.isfile(os.path.join(run_dir, "last.ckpt")):
            return command + ["--resume"]
        return command
    return again


def _train_log(run_dir):
    for name in ("train_log.csv", "log.csv"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    return os.path.join(run_dir, "train_log.csv")


def _summary(runner, p, table_dir, cam_dir=None):
    print("\n[demo] outputs")
    print("  table:    {}  (and table.csv)".format(os.path.join(table_dir, "table.md")))
    figures = sorted(f for f in os.listdir(table_dir) if f.endswith((".png", ".pdf", ".svg")))
    for f in figures:
        print("  figure:   {}".format(os.path.join(table_dir, f)))
    if cam_dir and os.path.isdir(cam_dir):
        pngs = sorted(f for f in os.listdir(cam_dir) if f.endswith(".png"))
        print("  CAMs:     {} ({} PNG overlays + GeoJSON regions in level-0 pixels)".format(
            cam_dir, len(pngs)))
    ran = [(s, t) for s, t in runner.timings if t is not None]
    if ran:
        print("  timings:  " + ", ".join("{} {:.0f} s".format(s, t) for s, t in ran) +
              "  (total {:.0f} s)".format(sum(t for _, t in ran)))


def run(args):
    if args.np < 1:
        raise UserError("--np must be >= 1, got {}".format(args.np))
    out = args.out
    p = paths(out)
    runner = Runner(out, force=args.force)
    # --paper-scale: checks its flags, writes OUT/paper-scale.yaml and points args.config at it
    scale = paper_scale.setup(args)
    args.config = args.config or DEMO_CONFIG
    args.slides = SYNTH_SLIDES if args.slides is None else args.slides

    if args.predictions:                       # the table only, from the user's predictions
        if not os.path.isfile(args.predictions):
            raise UserError("{}: predictions file not found".format(args.predictions))
        if args.manifest and not os.path.isfile(args.manifest):
            raise UserError("{}: manifest not found".format(args.manifest))
        runner.stage("table", table_command(args.predictions, p["table"], args.manifest),
                     always=True)
        _summary(runner, p, p["table"])
        _report(runner, out, args.predictions, args.manifest)
        return 0

    from model.config import check_world_size, load_config
    cfg = load_config(args.config, overrides={"out": p["train"]})   # checked before any work
    check_world_size(cfg, args.np)
    synthetic = args.manifest is None
    if synthetic:
        manifest, title = p["manifest"], "SYNTHETIC cohort (embedded demo, not the paper's data)"
        title = scale.title if scale else title
        runner.stage("synth", synth_command(args, p))
    else:
        if not os.path.isfile(args.manifest):
            raise UserError("{}: manifest not found".format(args.manifest))
        manifest, title = args.manifest, "cohort {}".format(os.path.basename(args.manifest))
    inputs = [manifest, args.config]
    prepare = prepare_command(args, manifest, p["cache"], cfg["data"]["target_mpp"])
    runner.stage("prepare", prepare, inputs=[manifest])
    train = train_command(args, manifest, p["cache"], p["train"])
    train_now = _resumable(runner, train, inputs, p["train"])
    runner.stage("train", train_now, inputs=inputs, key=train,
                 rerun=train_rerun(train_now, p["train"]))
    runner.stage("predict", predict_command(args, manifest, p["cache"], p["train"],
                                            p["predict"]), inputs=inputs)
    predictions = os.path.join(p["predict"], "predictions.csv")
    # Always rerun (seconds): it prints the table, which is what the user came for.
    runner.stage("table", table_command(predictions, p["table"], manifest,
                                        _train_log(p["train"]), title), always=True)
    _summary(runner, p, p["table"], os.path.join(p["predict"], "cam"))
    _report(runner, out, predictions, manifest, args.config)
    if scale:
        scale.finish(runner)
    return 0
