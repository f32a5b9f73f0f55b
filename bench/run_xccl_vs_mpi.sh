#!/usr/bin/env bash
# Run xccl-bench and its OpenMPI peer on the same payloads, side by side.
#   bench/run_xccl_vs_mpi.sh [builddir] [--quick]   (default builddir: build-xccl)
# Writes <builddir>/bench-xccl.json and <builddir>/bench-mpi-<n>.json and
# prints the load average before and after (the figures are only as quiet as
# the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
b="${1:-build-xccl}"
q="${2:-}"
cmake -S . -B "$b" >/dev/null
cmake --build "$b" --target xccl_bench >/dev/null
bench/build_mpi_peer.sh "$b" >/dev/null
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cpus"
"$b/xccl_bench" --json $q > "$b/bench-xccl.json"
for n in 2 4 8; do
  mpirun --allow-run-as-root --oversubscribe -np "$n" "$b/mpi_alltoallv" --json $q > "$b/bench-mpi-$n.json"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$b/bench-xccl.json $b/bench-mpi-2.json $b/bench-mpi-4.json $b/bench-mpi-8.json"
