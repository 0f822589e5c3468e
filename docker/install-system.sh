#!/usr/bin/env bash
# System packages of the pinned stack. One script for the Docker image, CI and `make setup`.
#   install-system.sh          OpenMPI from the distribution + OpenSlide + build tools
#   install-system.sh --no-mpi the same without OpenMPI (the Docker image builds 4.0.1 itself)
set -euo pipefail

with_mpi=1
[ "${1:-}" = "--no-mpi" ] && with_mpi=0
# An MPI built from source (the Docker image's OpenMPI 4.0.1) is kept: no distribution MPI over it.
if command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 \
   && ! dpkg -s openmpi-bin >/dev/null 2>&1; then
    with_mpi=0
fi

# TCMalloc: `python -m reproduce` preloads it (reproduce/__main__.py, "Allocator").
pkgs=(libopenslide0 libtcmalloc-minimal4 build-essential git ca-certificates curl)
# Headless Chromium renders the HTML report in its test (tests/test_report.py) and takes the
# README's screenshot. Debian ships it as a plain package; Ubuntu 18.04 as chromium-browser;
# later Ubuntu releases only as a snap, which a container cannot run: left out there.
os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}:${VERSION_ID:-}")
case "$os_id" in
    ubuntu:18.04) pkgs+=(chromium-browser) ;;
    ubuntu:*) echo "install-system: no chromium on $os_id (a snap there); the report's browser test will say so" >&2 ;;
    *) pkgs+=(chromium) ;;
esac
[ "$with_mpi" = 1 ] && pkgs+=(openmpi-bin libopenmpi-dev)

missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system: all present (${pkgs[*]})"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system: missing ${missing[*]}; run 'sudo bash docker/install-system.sh'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-system: installed ${missing[*]}"
