"""The stages of a run (the demo's and the paper-scale run's): their order, stamps and timings.

``STAGES`` names the stages in the order a run goes through them. A finished stage leaves a
stamp, ``OUT/.stamps/<stage>.json``, holding the command that ran it, a fingerprint of its input
files, its wall time and peak memory: a rerun skips a stage whose stamp matches what it would
run. A paper-scale run also keeps every stage's record in ``OUT/timings.json``.

Memory: two figures, because one alone misleads under mpirun:

* ``largest_gb``: the peak resident set of the largest single process of the tree, exact. On
  Linux ``wait4`` returns the child's resource usage merged with that of every descendant it
  waited for (mpirun waits for its ranks), so ``ru_maxrss`` is the largest process's peak.
* ``together_gb`` and ``per_process``: sampled every ``interval`` s with psutil over the live
  tree. ``together_gb`` is the largest sum of the tree's RSS seen at one moment (what the ranks
  need of the machine at once); ``per_process`` the peak of each process that reached
  ``min_gb``, labelled by its ``reproduce`` command (``train``, ``predict``, ...). A peak
  shorter than the interval can be missed, which the exact figure does not.
"""
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

from data.files import atomic_write_text

STAGES = ("synth", "prepare", "train", "predict", "table", "report")
TIMINGS = "timings.json"
STAMPS = ".stamps"               # in a run folder: one <stage>.json per finished stage
INPUTS_MARKER = ".demo-inputs"   # in a training run folder: the fingerprint of its inputs
GB = 1e9


# --------------------------------------------------------------------------- a run's folder

def run_paths(out):
    """Where each stage of a run writes, inside the run folder ``out``."""
    return {
        "cohort": os.path.join(out, "cohort"),
        "manifest": os.path.join(out, "cohort", "manifest.csv"),
        "cache": os.path.join(out, "cache"),
        "train": os.path.join(out, "train"),
        "predict": os.path.join(out, "predict"),
        "table": os.path.join(out, "table"),
    }


# --------------------------------------------------------------------------- stamps

def stamp_path(out, stage):
    return os.path.join(out, STAMPS, stage + ".json")


def fingerprint(inputs):
    """sha256 of the input files' names and contents (a changed config or manifest reruns the
    stage that reads it)."""
    h = hashlib.sha256()
    for path in inputs or ():
        h.update(path.encode())
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def read_stamp(out, stage):
    """The stamp of ``stage`` in the run folder ``out`` as a dict, or None (none, or unreadable)."""
    try:
        with open(stamp_path(out, stage)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stamp_matches(out, stage, key, inputs):
    """True when ``stage`` finished before with the same ``key`` (its command) and inputs."""
    stamp = read_stamp(out, stage)
    return stamp is not None and stamp.get("command") == key and \
        stamp.get("inputs") == fingerprint(inputs)


def write_stamp(out, stage, key, inputs, seconds, memory):
    """Marks ``stage`` finished: its command, inputs' fingerprint, wall time and peak memory."""
    return atomic_write_text(stamp_path(out, stage), json.dumps({
        "command": key, "inputs": fingerprint(inputs), "seconds": round(seconds, 1),
        "peak_rss_gb": memory["largest_gb"], "finished": now()}))


def resume_or_set_aside(command, inputs, run_dir):
    """A training run folder for ``command``: with a checkpoint of the same inputs, the command
    that resumes it (``--resume``); a folder holding a run of other inputs (another config or
    cohort) is moved aside, not mixed in. Returns (command, the folder it was moved to or None)."""
    marker = os.path.join(run_dir, INPUTS_MARKER)
    mark = fingerprint(inputs)
    aside = None
    if os.path.isfile(os.path.join(run_dir, "last.ckpt")):
        try:
            with open(marker) as f:
                if f.read().strip() == mark:
                    return command + ["--resume"], None
        except OSError:
            pass
        aside = "{}.old-{}".format(run_dir, time.strftime("%Y%m%d-%H%M%S"))
        os.replace(run_dir, aside)
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_text(marker, mark)
    return command, aside


def training_log(run_dir):
    """The training log of a run folder (train_log.csv, or an older run's log.csv)."""
    for name in ("train_log.csv", "log.csv"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    return os.path.join(run_dir, "train_log.csv")


def summary_lines(table_dir, cam_dir=None, timings=()):
    """What a run made, for the user: the table, its figures, the CAMs and the stages' wall time
    (``timings``: [(stage, seconds or None when skipped)])."""
    lines = ["  table:    {}  (and table.csv)".format(os.path.join(table_dir, "table.md"))]
    for f in sorted(f for f in os.listdir(table_dir) if f.endswith((".png", ".pdf", ".svg"))):
        lines.append("  figure:   {}".format(os.path.join(table_dir, f)))
    if cam_dir and os.path.isdir(cam_dir):
        pngs = [f for f in os.listdir(cam_dir) if f.endswith(".png")]
        lines.append("  CAMs:     {} ({} PNG overlays + GeoJSON regions in level-0 pixels)".format(
            cam_dir, len(pngs)))
    ran = [(s, t) for s, t in timings if t is not None]
    if ran:
        lines.append("  timings:  " + ", ".join("{} {:.0f} s".format(s, t) for s, t in ran) +
                     "  (total {:.0f} s)".format(sum(t for _, t in ran)))
    return lines


# --------------------------------------------------------------------------- time and memory

def _label(cmdline):
    """'train' for '.../python -m reproduce train ...', else the program's base name."""
    if "reproduce" in cmdline:
        i = cmdline.index("reproduce")
        if i + 1 < len(cmdline) and cmdline[i - 1:i] == ["-m"]:
            rest = [a for a in cmdline[i + 1:] if not a.startswith("-")]
            return rest[0] if rest else "reproduce"
    return os.path.basename(cmdline[0]) if cmdline else "?"


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and its descendants until ``stop()``."""

    def __init__(self, pid, interval=0.5):
        super(TreeSampler, self).__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.together = 0
        self.peaks = {}              # pid -> [label, peak bytes]
        self._halt = threading.Event()

    def _sample(self, psutil, root):
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                if proc.pid not in self.peaks:
                    self.peaks[proc.pid] = [_label(proc.cmdline()), 0]
            except psutil.Error:      # it ended between the listing and the read
                continue
            total += rss
            self.peaks[proc.pid][1] = max(self.peaks[proc.pid][1], rss)
        self.together = max(self.together, total)

    def run(self):
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._halt.is_set():
            self._sample(psutil, root)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def call(command, env=None, interval=0.5, min_gb=0.05):
    """Runs ``command`` (a list) to its end, like ``subprocess.call``; returns
    ``(exit status, memory)`` with memory = dict(largest_gb, together_gb, per_process=[[label,
    GB], ...] largest first, cpu_seconds: user + system time of the whole tree, the work done
    whatever else loads the machine). An exception while waiting (Ctrl-C) kills the command."""
    proc = subprocess.Popen(command, env=env)
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        sampler.stop()
        raise
    proc.returncode = _exit_code(status)   # reaped here: Popen must not wait for it again
    sampler.stop()
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    largest = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    per_process = sorted(([label, round(peak / GB, 2)] for label, peak in sampler.peaks.values()
                          if peak >= min_gb * GB), key=lambda x: -x[1])
    return proc.returncode, dict(largest_gb=round(largest / GB, 2),
                                 together_gb=round(sampler.together / GB, 2),
                                 per_process=per_process,
                                 cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1))


def timed_call(command, env=None):
    """``call`` with this process's environment plus ``env`` (TensorFlow's C++ chatter, such as
    CUDA probing, off unless set); returns (exit status, wall seconds, memory)."""
    merged = dict(os.environ)
    merged.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    merged.update(env or {})
    t0 = time.time()
    rc, memory = call(command, env=merged)
    return rc, time.time() - t0, memory


def load_average():
    """The 1, 5 and 15 min load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def now(seconds=None):
    """Local time as 'YYYY-mm-dd HH:MM:SS' (``seconds``: since the epoch; default: now)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


# --------------------------------------------------------------------------- timings.json

def stage_rows(out, timings, memory):
    """One record per stage run or skipped: wall time (a skipped stage: its earlier run's, from
    its stamp) and the peak memory that ``call`` measured. ``timings``: [(stage, seconds or
    None)]; ``memory``: {stage: call's memory dict}."""
    rows = []
    for stage, seconds in timings:
        row = dict(stage=stage, seconds=None if seconds is None else round(seconds, 1),
                   skipped=seconds is None)
        if seconds is None:
            stamp = read_stamp(out, stage)
            if stamp is not None:
                row["seconds_earlier_run"] = stamp.get("seconds")
        row.update(memory.get(stage, {}))
        rows.append(row)
    return rows


def timings_record(rows, started, load_start, **extra):
    """The record of a whole run: its stages (``stage_rows``), their total, the command's wall
    time since ``started`` (time.time()), the load average at both ends and the CPU count;
    ``extra`` (command, config, ...) first."""
    return dict(extra, stages=rows, stages_seconds=round(sum(r["seconds"] or 0 for r in rows), 1),
                wall_seconds=round(time.time() - started, 1), started=now(started),
                finished=now(), load_average_start=load_start, load_average_end=load_average(),
                cpus=os.cpu_count())


def write_timings(out, record):
    """Writes ``record`` to OUT/timings.json; returns its path."""
    return atomic_write_text(os.path.join(out, TIMINGS), json.dumps(record, indent=1) + "\n")


def read_timings(out):
    """OUT/timings.json as written by ``write_timings``, or None when there is none."""
    try:
        with open(os.path.join(out, TIMINGS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_text(load):
    return "/".join("{:.1f}".format(x) for x in load) if load else "n/a"


def _row_line(r):
    secs = "{:.0f}".format(r["seconds"]) if r["seconds"] is not None else "skipped"
    cpu = "{:.0f}".format(r["cpu_seconds"]) if "cpu_seconds" in r else ""
    largest = "{:.1f} GB".format(r["largest_gb"]) if "largest_gb" in r else ""
    together = "{:.1f} GB".format(r["together_gb"]) if "together_gb" in r else ""
    each = ", ".join("{} {:.1f}".format(label, gb) for label, gb in r.get("per_process", [])[:4])
    return "  {:<9} {:>9} {:>9}  {:>15}  {:>11}  {}".format(r["stage"], secs, cpu, largest,
                                                            together, each)


def timings_lines(record):
    """The record as a table: a line per stage (wall and CPU time, peak memory), then the total."""
    head = "  {:<9} {:>9} {:>9}  {:>15}  {:>11}  {}".format(
        "stage", "wall s", "CPU s", "largest process", "all at once", "per process, GB (sampled)")
    wall = record["wall_seconds"]
    total = ("  {:<9} {:>9.0f}  (whole command: {:.0f} s = {:.1f} min; load average at start {}, "
             "at end {})").format("total", record["stages_seconds"], wall, wall / 60.0,
                                  _load_text(record["load_average_start"]),
                                  _load_text(record["load_average_end"]))
    return [head] + [_row_line(r) for r in record["stages"]] + [total]
