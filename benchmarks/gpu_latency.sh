#!/usr/bin/env bash
# Latency measurements on a GPU, in one go (a few minutes on an H100):
#   1. kernel launches per MD step and per energy+forces call, from a jax.profiler trace
#      (benchmarks/count_launches.py; benzene, the 427K and 77K students);
#   2. host overhead of one molecule of 3-60 atoms: host call, device-resident call, ASE
#      calculator, side by side (benchmarks/bench_host_overhead.py; same two models);
#   3. a short table of both.
#
# Run from the repository root:
#   PYTHONPATH=$PWD OUT=/path/to/results bash benchmarks/gpu_latency.sh
# Environment: OUT (output folder, default benchmarks/results), PYTHON (default python3), TAG (file
# name suffix, default gpu). Each step has its own time limit; a step cut short keeps the rows it
# wrote (both scripts write their JSON after every row) and the next step still runs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
TAG=${TAG:-gpu}
mkdir -p "$OUT"
LAUNCHES="$OUT/launches_$TAG.json"
HOST="$OUT/host_overhead_$TAG.json"
export MLFF_JAX_COMMIT=${MLFF_JAX_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

start=$(date +%s)
echo "== host overhead (limit 100 s)"
timeout 100 "$PYTHON" benchmarks/bench_host_overhead.py --out "$HOST" --repeats 300 --null-repeats 2000 --budget-s 5 \
  || echo "bench_host_overhead.py stopped early (exit $?): the table shows what it wrote"
echo "== kernel launches (limit 130 s)"
timeout 130 "$PYTHON" benchmarks/count_launches.py --out "$LAUNCHES" \
  || echo "count_launches.py stopped early (exit $?): the table shows what it wrote"
echo "== summary ($(( $(date +%s) - start )) s)"
"$PYTHON" benchmarks/latency_table.py "$LAUNCHES" "$HOST"
