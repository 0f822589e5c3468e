#!/usr/bin/env bash
# Python stack of the reproduction: every pin of requirements.txt, then Horovod 0.19.0 built
# against OpenMPI and the installed TensorFlow. One script for the Docker image and `make setup`.
#   install-python.sh PYTHON [REQUIREMENTS]
# Environment: HOROVOD_GPU_ALLREDUCE=NCCL on GPU images (the Dockerfile sets it).
set -euo pipefail
py=${1:?usage: install-python.sh PYTHON [REQUIREMENTS]}
req=${2:-$(dirname "$0")/../requirements.txt}

# pip 24.0 is the last release that runs on Python 3.7.
"$py" -m pip install -q --upgrade "pip==24.0" "setuptools<68" wheel

# Everything but Horovod and imgaug. Horovod's build needs TensorFlow importable first; imgaug
# 0.4.0 asks for the GUI build of OpenCV, which would shadow the pinned headless one.
rest="${TMPDIR:-/tmp}/requirements-rest.txt"
grep -v -E '^(horovod|imgaug)==' "$req" > "$rest"
"$py" -m pip install -q -r "$rest" six
"$py" -m pip install -q --no-deps "$(grep -E '^imgaug==' "$req")"
if "$py" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$py" -m pip uninstall -q -y opencv-python
    "$py" -m pip install -q --force-reinstall --no-deps "$(grep -E '^opencv-python-headless==' "$req")"
fi

hvd_pin=$(grep -E '^horovod==' "$req")
if "$py" -c "import horovod, horovod.tensorflow as h, sys; sys.exit(horovod.__version__ != '${hvd_pin#horovod==}')" 2>/dev/null; then
    echo "install-python: $hvd_pin already built"
else
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_GLOO=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
        "$py" -m pip install -q --no-cache-dir --no-build-isolation "$hvd_pin"
fi
"$py" - <<'PY'
import tensorflow as tf, horovod, horovod.tensorflow
print("install-python: tensorflow", tf.__version__, "horovod", horovod.__version__)
PY
