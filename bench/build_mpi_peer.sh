#!/usr/bin/env bash
# Build the OpenMPI peer of xccl-bench. It is not part of the CMake build:
# OpenMPI is only a benchmark dependency (apt-get install openmpi-bin libopenmpi-dev).
#   bench/build_mpi_peer.sh [outdir]    -> prints outdir/mpi_alltoallv (default build-xccl)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build-xccl}"
mkdir -p "$out"
command -v mpicc >/dev/null || { echo "mpicc not found: apt-get install openmpi-bin libopenmpi-dev" >&2; exit 1; }
mpicc -O2 -g -o "$out/mpi_alltoallv" bench/mpi/mpi_alltoallv.c
echo "$out/mpi_alltoallv"
