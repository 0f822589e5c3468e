"""TF1's graph mode, seen from a function that needs eager execution (``fit``).

TensorFlow 1.15 switches to eager execution only before the default graph exists. A user who
built a model first (as the README's API example does) is in graph mode for the rest of the
process, so ``model.training.fit`` trains in a child process instead: these are the test for
that case and the child's runner.
"""
import codecs
import os
import subprocess
import sys


def graph_mode_in_use():
    """True when this process runs TensorFlow in TF1's graph mode and has already made the
    default graph (built a model or any op): TensorFlow's own condition for refusing to switch
    to eager execution, which training needs. False while TensorFlow is not even imported."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context
    from tensorflow.python.framework import ops
    if context.executing_eagerly():
        return False
    stack = getattr(ops, "_default_graph_stack", None)
    return getattr(stack, "_global_default_graph", None) is not None


def run_passing_output(command):
    """Runs ``command`` with this package importable, its stdout and stderr written to this
    process's stderr as they come; returns (exit status, the text of its last ``error: ``
    line, the command line's one-line error, or None)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decoder, tail = codecs.getincrementaldecoder("utf-8")("replace"), ""
    try:
        for chunk in iter(lambda: os.read(child.stdout.fileno(), 1 << 16), b""):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail = (tail + text)[-8192:]
        child.wait()
    except BaseException:   # interrupted here: the training process goes too
        child.kill()
        child.wait()
        raise
    finally:
        child.stdout.close()
    errors = [line[len("error: "):] for line in tail.replace("\r", "\n").splitlines()
              if line.startswith("error: ")]
    return child.returncode, errors[-1] if errors else None
