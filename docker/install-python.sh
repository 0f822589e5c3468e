#!/usr/bin/env bash
# Python stack of the reproduction: every pin of requirements.txt, then Horovod 0.19.0 built
# against OpenMPI and the installed TensorFlow. One script for the Docker images and `make setup`.
#   install-python.sh [--plan] PYTHON [REQUIREMENTS]
#     --plan  print what would be installed, one line per step, and install nothing
# Environment:
#   HOROVOD_GPU_ALLREDUCE=NCCL on GPU images (docker/Dockerfile sets it).
#   SKIP_PINS="tensorflow-gpu horovod numpy": requirement names that the base image already
#     provides in its own build (NVIDIA's NGC container, docker/Dockerfile.ngc); they are left
#     as the image has them. Unset for `make setup`, CI and docker/Dockerfile.
set -euo pipefail
plan=0
if [ "${1:-}" = "--plan" ]; then plan=1; shift; fi
py=${1:?usage: install-python.sh [--plan] PYTHON [REQUIREMENTS]}
req=${2:-$(dirname "$0")/../requirements.txt}

# Requirement names are case-insensitive, and a typo would silently install the pin anyway.
read -r -a skip <<< "${SKIP_PINS:-}"
skip_re=""
for name in "${skip[@]}"; do
    if ! grep -q -i -E "^${name//./\\.}==" "$req"; then
        echo "install-python: SKIP_PINS names '$name', which $req does not pin" >&2
        exit 2
    fi
    skip_re+="|${name//./\\.}"
done
skipped() {
    local n
    for n in "${skip[@]}"; do [ "${n,,}" = "${1,,}" ] && return 0; done
    return 1
}

# Everything but Horovod and imgaug (and SKIP_PINS). Horovod's build needs TensorFlow importable
# first; imgaug 0.4.0 asks for the GUI build of OpenCV, which would shadow the pinned headless one.
rest="${TMPDIR:-/tmp}/requirements-rest.txt"
grep -v -i -E "^(horovod|imgaug${skip_re})==" "$req" > "$rest"
hvd_pin=$(grep -E '^horovod==' "$req")
if [ "$plan" = 1 ]; then
    echo "pip: pip==24.0 setuptools<68 wheel"
    grep -E '^[A-Za-z0-9]' "$rest" | sed 's/^/pip: /'
    echo "pip: six"
    echo "pip --no-deps: $(grep -E '^imgaug==' "$req")"
    [ "${#skip[@]}" -gt 0 ] && echo "left to the base image: ${skip[*]}"
    skipped horovod || echo "build: $hvd_pin"
    exit 0
fi

# pip 24.0 is the last release that runs on Python 3.7.
"$py" -m pip install -q --upgrade "pip==24.0" "setuptools<68" wheel

"$py" -m pip install -q -r "$rest" six
"$py" -m pip install -q --no-deps "$(grep -E '^imgaug==' "$req")"
if "$py" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$py" -m pip uninstall -q -y opencv-python
    "$py" -m pip install -q --force-reinstall --no-deps "$(grep -E '^opencv-python-headless==' "$req")"
fi

if skipped horovod; then
    echo "install-python: horovod left to the base image"
elif "$py" -c "import horovod, horovod.tensorflow as h, sys; sys.exit(horovod.__version__ != '${hvd_pin#horovod==}')" 2>/dev/null; then
    echo "install-python: $hvd_pin already built"
else
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_GLOO=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
        "$py" -m pip install -q --no-cache-dir --no-build-isolation "$hvd_pin"
fi
"$py" - <<'PY'
import sys
import numpy, tensorflow as tf, horovod, horovod.tensorflow
print("install-python: python {} numpy {} tensorflow {} horovod {}".format(
    sys.version.split()[0], numpy.__version__, tf.__version__, horovod.__version__))
PY
