"""`python -m reproduce`: one error base class caught as one line, and quiet TensorFlow logs."""
import os
import re
import subprocess
import sys

import pytest

from data.errors import InputError
from reproduce.__main__ import main
from reproduce.errors import UserError
from tests.mpi import mpi_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A TensorFlow C++ log line: "2026-11-30 04:16:38.087420: I tensorflow/core/...cc:142] ..."
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] tensorflow/", re.M)


def _cli_start(*args, env=None):
    """Starts ``python -m reproduce ARGS`` (TF_CPP_MIN_LOG_LEVEL unset unless in ``env``);
    ``_cli_finish`` collects it."""
    merged = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    merged.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "reproduce"] + list(args), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=merged)


def _cli_finish(process):
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _cli(*args, env=None):
    return _cli_finish(_cli_start(*args, env=env))


def test_every_library_user_error_is_an_input_error_and_not_a_value_error():
    from data.cache import CacheError, PrepareError
    from data.camelyon import CamelyonError
    from data.manifest import ManifestError
    from data.nodes import AnnotationError
    from data.slide import SlideError
    from model.checkpoint import CheckpointError
    from model.resnet import WeightsError
    from data.synth import SynthError
    from report.figures import LogError
    from report.run import RunError
    for cls in (CacheError, PrepareError, CamelyonError, ManifestError, AnnotationError,
                SlideError, CheckpointError, WeightsError, LogError, UserError, SynthError,
                RunError):
        assert issubclass(cls, InputError), cls
        assert not issubclass(cls, ValueError), cls   # `except ValueError` must not catch them


def test_a_library_error_inside_a_command_is_one_line_and_exit_2(tmp_path):
    from data.manifest import ManifestError
    assert not issubclass(ManifestError, UserError)   # the library's own class reaches the CLI
    bad = tmp_path / "manifest.csv"
    bad.write_bytes(b"slide_id,path\n\"unterminated,x\n")
    r = _cli("prepare", "--manifest", str(bad), "--out", str(tmp_path / "cache"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: {}: ".format(bad)), r.stderr


def test_a_bug_is_not_swallowed_as_a_user_error(tmp_path, monkeypatch):
    import data.cache

    def broken(*args, **kwargs):   # a bug in the library: a plain ValueError
        raise ValueError("a bug, not bad input")
    monkeypatch.setattr(data.cache, "prepare", broken)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label,split\n")
    with pytest.raises(ValueError, match="a bug"):
        main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "c")])


def test_tensorflow_log_lines_hidden_unless_verbose():
    # selfcheck builds ResNet-50 and runs a session: TensorFlow logs CPU features, cuInit, ...
    # Both runs start together (mostly single-threaded start-up: two cores take both at once).
    started = [_cli_start("selfcheck", "--size", "32", "--tile", "32"),
               _cli_start("selfcheck", "--size", "32", "--tile", "32", "--verbose")]
    try:
        quiet = _cli_finish(started[0])
    finally:
        loud = _cli_finish(started[1])
    assert quiet.returncode == 0, quiet.stderr
    assert not TF_CPP_LINE.search(quiet.stderr) and "WARNING:tensorflow" not in quiet.stderr
    assert '"passed": true' in quiet.stdout
    assert loud.returncode == 0
    assert TF_CPP_LINE.search(loud.stderr), loud.stderr[-2000:]
    # a level the user set is kept; --verbose before the command works too
    assert _cli("--verbose", "--help").returncode == 0
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") in (None, "3", "0")


def test_mpirun_ranks_inherit_the_choice():
    # The demo runs its stages, `mpirun ... python -m reproduce train` among them, with its own
    # environment; a local mpirun hands it to every rank (no -x needed).
    code = ("import os, subprocess, sys; from reproduce.__main__ import quiet_logs; "
            "quiet_logs({}); print(subprocess.check_output(['mpirun', '--allow-run-as-root', "
            "'--oversubscribe', '-np', '2', sys.executable, '-c', "
            "'import os; level = os.environ[\\'TF_CPP_MIN_LOG_LEVEL\\']; "
            "os.write(1, (\\'<%s>\\' % level).encode())'], "
            "universal_newlines=True))")
    env = {k: v for k, v in mpi_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for verbose, want in ((False, "3"), (True, "0")):
        out = subprocess.check_output([sys.executable, "-c", code.format(verbose)], cwd=ROOT,
                                      env=env, universal_newlines=True, timeout=300)
        # one write per rank, so the two ranks' outputs cannot interleave within a value
        assert re.findall(r"<(\d+)>", out) == [want, want]
