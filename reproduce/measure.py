"""Wall time and peak memory of a command and every process it starts (the demo's stages).

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
import os
import subprocess
import sys
import threading
import time

GB = 1e9


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


def load_average():
    """The 1, 5 and 15 min load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def now():
    return time.strftime("%Y-%m-%d %H:%M:%S")
