"""A run of the reproduction as stages (``reproduce demo``): each a subprocess whose command line
is printed first, so that any step can be rerun by hand.

    synth -> prepare -> train (mpirun -np N, Horovod) -> predict --cam (test split) -> table
    -> report (one self-contained HTML file: table, figures, CAM gallery, provenance)

``Runner`` runs them inside one run folder (``stages.run_paths``). A rerun skips the stages
stamped as done with the same command and inputs (``report.stages``), and reruns the first that
changed and every one after it. Training resumes from its own checkpoint anyway; a training
folder left by other inputs is moved aside, not mixed in.
"""
import os
import shlex
import sys

from data.errors import InputError
from report import stages

SYNTHETIC_TITLE = "SYNTHETIC cohort (embedded demo, not the paper's data)"


class RunError(InputError):
    """A stage that failed (with the command that continues it) or an input file it lacks."""


def reproduce_command(*args):
    """``python -m reproduce ARGS`` with this interpreter, as a list of words."""
    return [sys.executable, "-m", "reproduce"] + [str(a) for a in args]


def quoted(command):
    """A command list as one shell line."""
    return " ".join(shlex.quote(c) for c in command)


def _given(*pairs):
    """The (flag, value) pairs whose value is set, as command-line words."""
    return [word for flag, value in pairs if value for word in (flag, value)]


def _existing(path, what):
    """``path`` when it is a file, else a RunError naming it as ``what``."""
    if not os.path.isfile(path):
        raise RunError("{}: {} not found".format(path, what))
    return path


# --------------------------------------------------------------------------- stage commands

def synth_command(cohort, slides, seed, mpp, extra=""):
    """The synthetic cohort: zlib tiles, level 0 at ``mpp``; ``extra``: more flags, one string."""
    return reproduce_command("synth", "--out", cohort, "--slides", slides, "--seed", seed,
                             "--mpp", mpp, "--compression", "zlib", *shlex.split(extra))


def prepare_command(manifest, cache, target_mpp):
    return reproduce_command("prepare", "--manifest", manifest, "--out", cache,
                             "--target-mpp", target_mpp)


def train_command(launcher, config, manifest, cache, run_dir, extra=""):
    """Training under ``launcher`` (the mpirun words, with -np N)."""
    return launcher + reproduce_command("train", "--config", config, "--manifest", manifest,
                                        "--cache", cache, "--out", run_dir, *shlex.split(extra))


def predict_command(config, manifest, cache, run_dir, out):
    return reproduce_command("predict", "--checkpoint", os.path.join(run_dir, "best.ckpt"),
                             "--manifest", manifest, "--config", config, "--cache", cache,
                             "--split", "test", "--out", out, "--cam")


def table_command(predictions, out, manifest=None, log=None, title=""):
    """The table; ``log`` (the training log) only when that file exists."""
    log = log if log and os.path.isfile(log) else None
    return reproduce_command("table", "--predictions", predictions, "--out", out, "--title",
                             title, *_given(("--manifest", manifest), ("--log", log)))


def report_command(out, predictions, manifest=None, config=None):
    return reproduce_command("report", "--run", out, "--predictions", predictions,
                             *_given(("--manifest", manifest), ("--config", config)))


def train_rerun(command, run_dir):
    """The command that continues a failed training: with ``--resume`` once the run directory
    holds a checkpoint (train refuses to start over on it), else the command itself."""
    def again():
        if "--resume" not in command and os.path.isfile(os.path.join(run_dir, "last.ckpt")):
            return command + ["--resume"]
        return command
    return again


# --------------------------------------------------------------------------- the runner

class Runner:
    """Runs the stages of the run folder ``out`` as subprocesses, printing each command and
    skipping stamped ones; keeps each stage's wall time and peak memory."""

    def __init__(self, out, force=False):
        self.out = out
        self.paths = stages.run_paths(out)
        self.force = force
        self.changed = False     # once a stage reruns, all later stages rerun too
        self.timings = []
        self.memory = {}         # stage -> peak RSS (report.stages.call)

    def done(self, stage, command, inputs=None):
        if self.force or self.changed:
            return False
        return stages.stamp_matches(self.out, stage, command, inputs)

    def stage(self, stage, command, env=None, always=False, inputs=None, key=None, rerun=None):
        """Runs ``command`` unless its stamp says it ran with the same ``key`` (default: the
        command) and ``inputs``. ``rerun``: a function giving the command that continues the
        stage after a failure (default: ``command``), printed in the error so that it works."""
        key = command if key is None else key
        if not always and self.done(stage, key, inputs):
            print("[demo] {}: done before, skipped (stamp {})".format(
                stage, stages.stamp_path(self.out, stage)), flush=True)
            self.timings.append((stage, None))
            return
        self.changed = True
        print("\n[demo] {}:\n  {}".format(stage, quoted(command)), flush=True)
        rc, seconds, memory = stages.timed_call(command, env)
        self.memory[stage] = memory
        if rc != 0:
            raise RunError("demo stage '{}' failed (exit {}); rerun it with: {}".format(
                stage, rc, quoted(command if rerun is None else rerun())))
        stages.write_stamp(self.out, stage, key, inputs, seconds, memory)
        self.timings.append((stage, seconds))
        print("[demo] {}: {:.0f} s, peak RSS {:.1f} GB (largest process), {:.1f} GB (all at "
              "once)".format(stage, seconds, memory["largest_gb"], memory["together_gb"]),
              flush=True)

    def resumable(self, command, inputs, run_dir):
        """An interrupted training of the same inputs is resumed (--resume); a run directory
        left by other inputs (another config or cohort) is moved aside, not mixed in."""
        if self.done("train", command, inputs):
            return command
        command, aside = stages.resume_or_set_aside(command, inputs, run_dir)
        if aside:
            print("[demo] train: {} held a run of other inputs; moved to {}".format(
                run_dir, aside))
        return command

    def cohort(self, manifest, synth, title=None):
        """(manifest, the table's title): the user's ``manifest``, else the synthetic cohort
        that the command ``synth`` makes here (titled ``title``, default SYNTHETIC_TITLE)."""
        if manifest is None:
            self.stage("synth", synth)
            return self.paths["manifest"], title or SYNTHETIC_TITLE
        return _existing(manifest, "manifest"), "cohort {}".format(os.path.basename(manifest))

    def train_and_predict(self, manifest, config, target_mpp, launcher, train_args=""):
        """prepare -> train (resumed when interrupted) -> predict; returns the predictions'
        path."""
        p, inputs = self.paths, [manifest, config]
        self.stage("prepare", prepare_command(manifest, p["cache"], target_mpp),
                   inputs=[manifest])
        train = train_command(launcher, config, manifest, p["cache"], p["train"], train_args)
        now = self.resumable(train, inputs, p["train"])
        self.stage("train", now, inputs=inputs, key=train, rerun=train_rerun(now, p["train"]))
        self.stage("predict", predict_command(config, manifest, p["cache"], p["train"],
                                              p["predict"]), inputs=inputs)
        return os.path.join(p["predict"], "predictions.csv")

    def tabulate(self, predictions, manifest=None, config=None, title="", trained=True):
        """The table (always rerun, seconds: it prints what the user came for), the summary of
        the outputs and the report (the demo's last line names it). ``trained`` False: the
        user's own predictions (checked first), without a training log or CAMs."""
        p = self.paths
        if not trained:
            _existing(predictions, "predictions file")
            if manifest:
                _existing(manifest, "manifest")
        log = stages.training_log(p["train"]) if trained else None
        self.stage("table", table_command(predictions, p["table"], manifest, log, title),
                   always=True)
        print("\n[demo] outputs")
        cams = os.path.join(p["predict"], "cam") if trained else None
        print("\n".join(stages.summary_lines(p["table"], cams, self.timings)))
        self.stage("report", report_command(self.out, predictions, manifest, config),
                   always=True)
        print("\n[demo] report: {}  (one self-contained HTML file; open it in a browser)".format(
            os.path.abspath(os.path.join(self.out, "report.html"))), flush=True)

    def record_timings(self, started, load_start, **extra):
        """Prints the stages' wall time and peak memory and writes them, with ``extra`` (command,
        config, ...), to OUT/timings.json; returns the record."""
        rows = stages.stage_rows(self.out, self.timings, self.memory)
        record = stages.timings_record(rows, started, load_start, **extra)
        path = stages.write_timings(self.out, record)
        print("\n[demo] paper scale: stage timings (wall) and peak memory -> {}".format(path))
        print("\n".join(stages.timings_lines(record)))
        return record

