"""What a reader needs to trust a run: which code, which packages, which inputs, which machine.

``collect`` gathers it as a plain dict (JSON-serialisable) for ``report.page``:

    git        commit, dirty flag (uncommitted changes to tracked files or untracked files)
    packages   every ``name==version`` pin of requirements.txt beside the installed version
    config     the training config's path and text
    manifest   the cohort manifest's path and sha256 (the cohort the numbers came from)
    machine    CPU model, logical cores, RAM, GPUs (nvidia-smi), OS, Python
    timings    the demo's stage times, from its stamps (OUT/.stamps/<stage>.json)

Nothing here raises on a missing tool or file: a field the machine cannot answer says so
("not a git checkout", "no nvidia-smi"), since a report without one field is still useful.
"""
import os
import platform
import re
import shutil
import subprocess
import sys

from data.files import sha256_file
from report.stages import STAGES, STAMPS, read_stamp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")


def _run(cmd, cwd=None, timeout=20):
    """stdout of ``cmd`` (stripped), or None when it cannot run or fails."""
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_state(root=ROOT):
    """{'commit', 'dirty', 'changed'}: HEAD and whether the checkout differs from it
    ('changed': how many paths `git status --porcelain` lists); commit None outside git."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if not commit:
        return {"commit": None, "dirty": None, "changed": 0}
    status = _run(["git", "status", "--porcelain"], cwd=root)
    changed = len(status.splitlines()) if status else 0
    return {"commit": commit, "dirty": status is None or changed > 0, "changed": changed}


def pinned_packages(requirements=REQUIREMENTS):
    """[(name, pinned, installed or None)] for each ``name==version`` line of requirements."""
    import pkg_resources
    out = []
    try:
        with open(requirements) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if not m:
            continue
        name, pinned = m.group(1), m.group(2)
        try:
            installed = pkg_resources.get_distribution(name).version
        except pkg_resources.DistributionNotFound:
            installed = None
        out.append((name, pinned, installed))
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_bytes():
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:     # psutil missing or unreadable /proc: RAM is then unknown
        return None


def gpus():
    """['NVIDIA H200, 143771 MiB, driver 550.54'] per GPU, [] when nvidia-smi finds none,
    None when there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    text = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"])
    if not text:
        return []
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            out.append("{}, {}, driver {}".format(*parts))
        elif line.strip():
            out.append(line.strip())
    return out


def machine():
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_bytes": memory_bytes(),
            "gpus": gpus(), "os": platform.platform(),
            "python": "{} ({})".format(platform.python_version(), sys.executable),
            "host": platform.node()}


def stage_timings(run_dir, order=STAGES):
    """[(stage, seconds, finished, peak RSS GB or None)] from RUN/.stamps/*.json, in ``order``
    (a run's stages, ``report.stages.STAGES``) then by name."""
    folder = os.path.join(run_dir, STAMPS)
    names = [n[:-5] for n in os.listdir(folder) if n.endswith(".json")] \
        if os.path.isdir(folder) else []
    stamps = {name: read_stamp(run_dir, name) for name in names}
    rows = {name: (s.get("seconds"), s.get("finished"), s.get("peak_rss_gb"))
            for name, s in stamps.items() if s is not None}
    rank = {s: i for i, s in enumerate(order)}
    return [(s,) + rows[s] for s in sorted(rows, key=lambda s: (rank.get(s, len(rank)), s))]


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def collect(run_dir, config=None, manifest=None, stages=STAGES, requirements=REQUIREMENTS):
    """The provenance of the run in ``run_dir`` (see the module's docstring)."""
    man = None
    if manifest:
        man = {"path": manifest,
               "sha256": sha256_file(manifest) if os.path.isfile(manifest) else None}
    return {
        "git": git_state(),
        "packages": pinned_packages(requirements),
        "config": None if not config else {"path": config, "text": read_text(config)},
        "manifest": man,
        "machine": machine(),
        "timings": stage_timings(run_dir, stages),
    }
