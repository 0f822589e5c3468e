#!/usr/bin/env bash
# This machine's CPU demo: 2 ranks on 2 cores, one TF thread each (OMP_NUM_THREADS).
# Runs as root in containers, hence --allow-run-as-root; --oversubscribe lets 2 ranks share
# cores; vader's single-copy mechanism (CMA) is often not permitted in containers.
#   MANIFEST=cohort/manifest.csv CACHE=runs/demo/cache bash scripts/train_cpu_demo.sh [--resume]
set -euo pipefail
NP=${NP:-2}
CONFIG=${CONFIG:-configs/demo.yaml}
MANIFEST=${MANIFEST:-runs/demo/cohort/manifest.csv}
CACHE=${CACHE:-runs/demo/cache}
OUT=${OUT:-runs/demo}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=none

mpirun --allow-run-as-root --oversubscribe -np "$NP" -x OMP_NUM_THREADS \
    "$PYTHON" -m reproduce train --config "$CONFIG" --manifest "$MANIFEST" --cache "$CACHE" \
    --out "$OUT" "$@"
