#!/usr/bin/env bash
# Every benchmark at its CPU default sizes (one torch thread; ~10-15 minutes on a 2-core machine).
#   bash benchmarks/run_cpu.sh [OUT_DIR]      (default benchmarks/out/cpu)
# Then: python -m benchmarks.tables OUT_DIR   prints the Markdown tables of BENCHMARKS.md.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/out/cpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
status=0
for bench in bench_signals bench_data bench_batch bench_speedups bench_orchestration bench_schedule; do
  echo "=== $bench ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  extra=()
  [ "$bench" = bench_orchestration ] && extra=(--batch-curve-json latest)
  python -m "benchmarks.$bench" --device cpu --out "$OUT" "${extra[@]}" 2>&1 \
    | grep --line-buffered -v -E '^(│|╭|╰|├)|View detailed results|INFO tune.py|To visualize your results|^$'
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
exit $status
