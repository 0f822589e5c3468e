#!/usr/bin/env bash
# One node, 8 GPUs: the paper's setup (batch 8 = one slide per GPU, no accumulation).
# Edit CONFIG / MANIFEST / OUT, then run from the repository root:  bash scripts/train_1node_8gpu.sh
# Add --resume to continue a run from OUT/last.ckpt after a crash.
set -euo pipefail
CONFIG=${CONFIG:-configs/paper.yaml}
MANIFEST=${MANIFEST:-my_cohort/manifest.csv}
OUT=${OUT:-runs/paper}
PYTHON=${PYTHON:-.venv/bin/python}

# -bind-to none -map-by slot: Horovod's recommended OpenMPI placement, one rank per GPU
# (each rank pins GPU hvd.local_rank()). -x passes the environment to every rank.
mpirun -np 8 \
    -bind-to none -map-by slot \
    -x NCCL_DEBUG=WARN -x LD_LIBRARY_PATH -x PATH \
    -mca pml ob1 -mca btl ^openib \
    "$PYTHON" -m reproduce train --config "$CONFIG" --manifest "$MANIFEST" --out "$OUT" "$@"
