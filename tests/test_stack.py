"""The pinned stack: versions, a real 2-rank Horovod allreduce, and the Docker image's recipe."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.mpi import mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins():
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def test_python_and_paper_versions():
    import tensorflow as tf
    import horovod
    import mpi4py
    assert sys.version_info[:2] == (3, 7)
    assert tf.__version__ == "1.15.3"
    assert horovod.__version__ == "0.19.0"
    assert mpi4py.__version__ == "3.0.3"


def test_installed_versions_match_requirements():
    import pkg_resources
    pins = _pins()
    assert "tensorflow-gpu" in pins and "horovod" in pins
    wrong = {}
    for name, version in pins.items():
        installed = pkg_resources.get_distribution(name).version
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, "installed != pinned: {}".format(wrong)


def test_headless_opencv_only():
    import pkg_resources
    with pytest.raises(pkg_resources.DistributionNotFound):
        pkg_resources.get_distribution("opencv-python")


def test_horovod_two_rank_allreduce_equals_mean():
    p = mpirun(2, os.path.join(ROOT, "tests", "mpi_allreduce_worker.py"), timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["size"] == 2
    assert result["tensorflow"] == "1.15.3" and result["horovod"] == "0.19.0"
    for k, (lo, hi) in enumerate(result["averaged"]):
        expected = (k + 1) * (2 + 1) / 2.0
        assert lo == hi == pytest.approx(expected, rel=0, abs=1e-6)
    assert result["summed"] == 3.0


def test_hadolint_passes_on_dockerfile():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    p = subprocess.run([hadolint, os.path.join(ROOT, "docker", "Dockerfile")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert p.returncode == 0, p.stdout


def test_image_and_venv_install_from_the_same_scripts():
    with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:10.0-cudnn7-devel-ubuntu18.04" in dockerfile
    assert "OPENMPI_VERSION=4.0.1" in dockerfile and "HOROVOD_GPU_ALLREDUCE=NCCL" in dockerfile
    assert "bash docker/install-system.sh" in dockerfile
    assert "bash docker/install-system.sh" in makefile and "bash docker/install-system.sh" in ci
    assert "docker/install-python.sh .venv/bin/python requirements.txt" in dockerfile
    assert "docker/install-python.sh $(PY) requirements.txt" in makefile
    assert "COPY requirements.txt" in dockerfile
    assert 'CMD ["make", "reproduce-table"]' in dockerfile


def test_cli_help_lists_commands_and_rejects_unknown():
    p = subprocess.run([sys.executable, "-m", "reproduce", "--help"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert p.returncode == 0
    from reproduce.__main__ import COMMANDS
    import importlib.util
    present = [n for n, (m, _) in COMMANDS.items() if importlib.util.find_spec(m)]
    assert present, "no command module is installed"
    for name in present:
        assert name in p.stdout
    bad = subprocess.run([sys.executable, "-m", "reproduce", "no-such-command"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
