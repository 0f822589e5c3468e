"""`python -m reproduce <command>`: the reproduction's command line.

Each command is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when its command runs, so ``--help`` is fast and loads no TensorFlow.

Only this entry point sets process-wide state, before any command imports a library: TensorFlow's
C++ log lines and Python deprecation warnings are hidden unless ``--verbose`` (``quiet_logs``;
child processes inherit the choice: the demo's stages, mpirun's local ranks, bench's child), and
matplotlib draws with the Agg backend (files only; ``report.figures`` never selects one).

Allocator: TensorFlow's CPU kernels allocate and free buffers of hundreds of MB at every step;
glibc's malloc returns each one to the kernel and faults it in again on the next (a 2,350 x
1,950 px step spent about as long in the kernel as in user code). So the entry point re-executes
itself once with TCMalloc preloaded (``LD_PRELOAD``), when the library is installed
(libtcmalloc-minimal4) and not already loaded: the step is then 1.5-1.9x faster on this CPU
(docs/benchmarks.md). ``REPRODUCE_ALLOCATOR=system`` keeps the C library's malloc. Child
processes (mpirun's ranks, the demo's stages, bench's child) inherit the preload.

Errors: a ``data.errors.InputError`` (bad input: a file, a field, a value; the base of every
user-facing error of the library and of ``reproduce.errors.UserError``) is printed as one line
``error: ...`` with exit status 2. Anything else is a bug and keeps its traceback.
"""
import argparse
import importlib
import importlib.util
import logging
import os
import sys

from data.errors import InputError

# TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR lines from TensorFlow's C++.
QUIET_TF_LOG_LEVEL = "3"
VERBOSE_TF_LOG_LEVEL = "0"

# name -> (module, one-line help). Order is the order of a reproduction.
COMMANDS = {
    "synth": ("reproduce.synth", "write a synthetic cohort of openslide-readable slides + manifest"),
    "camelyon": ("reproduce.camelyon", "build a manifest for CAMELYON16/17 from their label files"),
    "prepare": ("reproduce.prepare", "read each slide once at the target mpp into the cache"),
    "train": ("reproduce.train", "train the whole-slide ResNet-50 (run under mpirun for Horovod)"),
    "predict": ("reproduce.predict", "predict slides and nodes, export class activation maps"),
    "table": ("reproduce.table", "the paper's tables and figures from a predictions CSV"),
    "report": ("reproduce.report", "one self-contained HTML report of a run: table, figures, "
                                   "CAMs, provenance"),
    "demo": ("reproduce.demo", "the embedded synthetic default, end to end (make reproduce-table)"),
    "bench": ("reproduce.bench", "time and peak memory of one training step (direct|streaming)"),
    "selfcheck": ("reproduce.selfcheck", "streaming against whole-image forward and gradients, judged against float64"),
}


TCMALLOC = "tcmalloc_minimal"
ALLOCATOR_ENV = "REPRODUCE_ALLOCATOR"


def preload_tcmalloc(argv):
    """Re-executes ``python -m reproduce argv`` with TCMalloc in LD_PRELOAD (module docstring,
    "Allocator"); returns without doing anything when it is loaded, missing, or not wanted."""
    if os.environ.get(ALLOCATOR_ENV, "tcmalloc") != "tcmalloc" or not sys.platform.startswith(
            "linux") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    import ctypes.util
    library = ctypes.util.find_library(TCMALLOC)     # its soname, which ld.so finds
    if library is None:
        return
    os.environ["LD_PRELOAD"] = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "reproduce"] + list(argv))


def _available():
    return {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def quiet_logs(verbose):
    """Sets the process-wide logging choices before TensorFlow or matplotlib load: TensorFlow's
    C++ logging (hidden unless ``verbose``; an explicit TF_CPP_MIN_LOG_LEVEL is kept when not
    verbose) and matplotlib's Agg backend (unless MPLBACKEND names one)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = VERBOSE_TF_LOG_LEVEL
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_LOG_LEVEL)
        # TF's Python deprecation notices ("WARNING:tensorflow:From ...") go to this logger,
        # which TensorFlow creates without a level of its own.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before any command module (and so TensorFlow) is imported: TF reads the level once.
    quiet_logs("--verbose" in argv)
    commands = _available()
    parser = argparse.ArgumentParser(
        prog="python -m reproduce",
        description="Whole-slide ResNet-50 for nodal micrometastasis (Modern Pathology 2021), "
                    "reproduced on TensorFlow 1.15.3 + Horovod 0.19.0.")
    verbose_help = "show TensorFlow's C++ log lines (hidden by default)"
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, text) in commands.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
            # also after the command (`reproduce train ... --verbose`): same destination
            p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help=verbose_help)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(commands[args.command][0]).run(args) or 0
    except InputError as e:
        print("error: {}".format(str(e).replace("\n", " ")), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    preload_tcmalloc(sys.argv[1:])
    sys.exit(main())
