"""`python -m reproduce <command>`: the reproduction's command line.

Each command lives in its own module of this package with two functions, ``add_arguments(parser)``
and ``run(args) -> int``. Modules are imported only when their command runs, so ``--help`` is fast
and does not load TensorFlow.
"""
import argparse
import importlib
import importlib.util
import sys

from reproduce.errors import UserError

# name -> (module, one-line help). Order is the order of a reproduction.
COMMANDS = {
    "synth": ("reproduce.synth", "write a synthetic cohort of openslide-readable slides + manifest"),
    "camelyon": ("reproduce.camelyon", "build a manifest for CAMELYON16/17 from their label files"),
    "prepare": ("reproduce.prepare", "read each slide once at the target mpp into the cache"),
    "train": ("reproduce.train", "train the whole-slide ResNet-50 (run under mpirun for Horovod)"),
    "predict": ("reproduce.predict", "predict slides and nodes, export class activation maps"),
    "table": ("reproduce.table", "the paper's tables and figures from a predictions CSV"),
    "demo": ("reproduce.demo", "the embedded synthetic default, end to end (make reproduce-table)"),
    "bench": ("reproduce.bench", "time and peak memory of one training step (direct|streaming)"),
    "selfcheck": ("reproduce.selfcheck", "streaming against whole-image forward and gradients"),
}


def _available():
    found = {}
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, text)
    return found


def main(argv=None):
    commands = _available()
    parser = argparse.ArgumentParser(
        prog="python -m reproduce",
        description="Whole-slide ResNet-50 for nodal micrometastasis (Modern Pathology 2021), "
                    "reproduced on TensorFlow 1.15.3 + Horovod 0.19.0.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, text) in commands.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(commands[args.command][0]).run(args) or 0
    except UserError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
