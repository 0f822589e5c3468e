#!/usr/bin/env bash
# Several nodes from a hostfile, e.g. 2 nodes x 4 GPUs (batch 8, no accumulation):
#   hosts.txt:   node1 slots=4
#                node2 slots=4
# The repository, the venv and the cache must be at the same path on every node (shared
# filesystem); only rank 0 writes OUT. Run from the repository root on the first node:
#   HOSTFILE=hosts.txt NP=8 bash scripts/train_multinode.sh [--resume]
set -euo pipefail
HOSTFILE=${HOSTFILE:-hosts.txt}
NP=${NP:-8}            # total ranks = GPUs; train.batch_size must be a multiple of it
CONFIG=${CONFIG:-configs/paper.yaml}
MANIFEST=${MANIFEST:-my_cohort/manifest.csv}
OUT=${OUT:-runs/paper}
PYTHON=${PYTHON:-.venv/bin/python}
IFACE=${IFACE:-eth0}   # the network interface the nodes share

mpirun -np "$NP" --hostfile "$HOSTFILE" \
    -bind-to none -map-by slot \
    -x NCCL_DEBUG=WARN -x NCCL_SOCKET_IFNAME="$IFACE" -x LD_LIBRARY_PATH -x PATH \
    -mca pml ob1 -mca btl ^openib -mca btl_tcp_if_include "$IFACE" \
    "$PYTHON" -m reproduce train --config "$CONFIG" --manifest "$MANIFEST" --out "$OUT" "$@"
