#!/usr/bin/env bash
# Every benchmark on the lent GPU machine, in one device call of at most 10 minutes.
#
#   bash benchmarks/run_gpu.sh [all|part1|part2]
#
# Runs from the project root on the device (the `run` tool copies the working tree there). Results:
# one JSON per benchmark, log.txt, nvidia-smi.txt and tables.md (the Markdown of BENCHMARKS.md)
# under $OUT (the tool's output folder; benchmarks/out/gpu when $OUT is unset).
#   all    every benchmark with the time limits below (~9.5 minutes in all)
#   part1  signals, data path, batch-size curve with twice the time   (one call)
#   part2  speed knobs and orchestration with more time and rounds    (a second call)
# Each benchmark runs under `timeout --signal=INT`: past its limit it writes what it measured so far.
# Ray comes from the bundle built here by `bash ../shared/tools/ray-gpu-bundle.sh` (pass
# carry: [".raybundle"]); without it the orchestration benchmark measures checkpoints only.
# Set DEBA_COMMIT to the checkout's commit (the device copy has no .git): it goes into every result.
# Plumbing check without a GPU: BENCH_DEVICE=cpu BENCH_ARGS=--quick OUT=/tmp/sim PYTHON=python bash benchmarks/run_gpu.sh
set -u
cd "$(dirname "$0")/.."
PART="${1:-all}"
OUT="${OUT:-benchmarks/out/gpu}"
PY="${PYTHON:-python3}"
DEVICE="${BENCH_DEVICE:-cuda}"
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD" RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
if [ -f .raybundle/ray-py312.tar.xz ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .raybundle/ray-py312.tar.xz && export PYTHONPATH="/tmp/site:$PWD"
fi
LOG="$OUT/log.txt"
{
  echo "part=$PART commit=${DEBA_COMMIT:-unknown} start=$(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/nvidia-smi.txt" | tee -a "$LOG"
RAY_OK=1
"$PY" -c "import ray, ray.tune" 2>/dev/null || { RAY_OK=0; echo "no Ray importable: orchestration runs --no-ray" | tee -a "$LOG"; }

bench() {  # bench SECONDS MODULE [ARGS...]
  local limit=$1 mod=$2; shift 2
  echo "=== $mod (limit ${limit}s, $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$LOG"
  timeout --signal=INT --kill-after=15 "$limit" "$PY" -m "benchmarks.$mod" --device "$DEVICE" --out "$OUT" "$@" \
    "${EXTRA[@]}" 2>&1 \
    | grep --line-buffered -v -E '^(│|╭|╰|├)|View detailed results|INFO tune.py|To visualize your results|^$' \
    | tee -a "$LOG"
}
ray_args=(); [ "$RAY_OK" = 1 ] || ray_args=(--no-ray)

case "$PART" in
  all)
    bench 55 bench_signals
    bench 60 bench_data
    bench 150 bench_batch --budget-s 10
    bench 170 bench_speedups
    bench 110 bench_orchestration --batch-curve-json latest "${ray_args[@]}"
    ;;
  part1)
    bench 120 bench_signals --repeats 3 --train-limit 8192
    bench 110 bench_data --samples 20480
    bench 330 bench_batch --budget-s 30 --samples 8192
    ;;
  part2)
    bench 330 bench_speedups --samples 8192 --repeats 4
    bench 240 bench_orchestration --batch-curve-json latest --rounds 2 "${ray_args[@]}"
    ;;
  *) echo "unknown part '$PART': use all, part1 or part2" >&2; exit 2 ;;
esac
"$PY" -m benchmarks.tables "$OUT" > "$OUT/tables.md" && echo "tables: $OUT/tables.md" | tee -a "$LOG"
echo "end=$(date -u +%FT%TZ)" | tee -a "$LOG"
