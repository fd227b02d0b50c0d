#!/usr/bin/env bash
# The GPU visit (issue 23): the one prepared command for a lent GPU machine, tried here in plumbing mode.
#
#   bash benchmarks/run_gpu.sh [STEP|PART ...]        (default: all)
#
# Steps, in this order, each under its own time limit (`timeout --signal=INT`: past it a step writes
# what it has measured so far; KILL_AFTER=20 s later it is killed):
#   1 smoke        six paper archs at B=64 and B=1024 on synthetic CIFAR-shaped data with the loop's GPU
#                  defaults: finite loss, epoch time, samples/s, MFU     (benchmarks/bench_smoke.py)
#   2 bench        the existing benchmarks: signal overhead, data path, samples/s vs B per arch, speed
#                  knobs, checkpoint cost (bench_signals, bench_data, bench_batch, bench_speedups,
#                  bench_orchestration --no-ray, at reduced sizes; the compile and CUDA-graph variants
#                  are left out: a cold compile alone takes ~45 s; Ray's share is measured in step 3)
#   3 packing      1, 2, 4, 8 concurrent resnet18 trials through run_grid with --gpus-per-trial 1/N:
#                  total samples/s and per-trial slowdown    (bench_packing.py; skipped without Ray)
#   4 table1       Table 1 profile: fixed B=64 on all of Fashion-MNIST, resnet18 + mobilenetv3 (seed 2)
#                  sharing the GPU, last-step and epoch-mean statistics, as many epochs as fit the limit
#                  (sized from steps 1 and 3; run_grid --study table1_full with Ray, else the same trials
#                  in-process: benchmarks/gpu_visit.py), then `python -m analysis` on the store
#   5 epoch_times  per-arch seconds per epoch at B=64 (step 1's numbers) -> $OUT/gpu_epoch_times.json,
#                  the file orchestrator/epoch_times.py reads (commit it as benchmarks/gpu_epoch_times.json)
# Parts: all = 1 2 3 4 5;  part1 = 1 2 3 5;  part2 = 4.  Single steps: smoke, bench, packing, table1, epoch_times.
#
# Budget on the lent H200 (15 min of device time in all, machine start included; <= 10 min a call):
#   call 1: bash benchmarks/run_gpu.sh part1   timeout_s 360; limits: smoke 60, signals 25, data 30,
#           batch curve 60, speed knobs 40, checkpoints 25, packing 75, epoch_times 15 (takes ~1 s):
#           330 s at most, with the prelude (~10 s) and the packing after each step
#   call 2, at once (the machine stays warm only 30 s after a call; its work folder survives, so step
#           4 sizes its epochs from steps 1 and 3):
#           LIMIT_TABLE1=<call 1's lease.budget_left_s - 100> bash benchmarks/run_gpu.sh part2
#           timeout_s = LIMIT_TABLE1 + 60 (analysis 20 s, Ray unpack and start-up); default LIMIT_TABLE1 360
#   both calls: carry [".raybundle", ".data"] (Ray 31 MB + Fashion-MNIST 30 MB + the tree 1.4 MB < 64 MiB)
#   `all` in one call needs ~720 s with these limits: over a call's 600 s, so on the H200 use the parts.
# Limits (seconds): LIMIT_SMOKE, LIMIT_SIGNALS, LIMIT_DATA, LIMIT_BATCH_CURVE, LIMIT_SPEEDUPS,
# LIMIT_ORCHESTRATION, LIMIT_PACKING, LIMIT_TABLE1, LIMIT_ANALYSIS, LIMIT_EPOCH_TIMES. Extra arguments
# for one step: ARGS_SMOKE, ARGS_SIGNALS, ARGS_DATA, ARGS_BATCH_CURVE, ARGS_SPEEDUPS, ARGS_ORCHESTRATION,
# ARGS_PACKING, ARGS_TABLE1
# (e.g. ARGS_SMOKE="--archs resnet18"). TABLE1_EPOCHS=N fixes the Table 1 epochs instead of sizing them.
#
# Outputs (the device tool returns at most 8 files from $OUT): log.txt, nvidia-smi.txt, steps.tsv
# (step, limit, seconds, exit code), tables.md (benchmarks.tables of every JSON), gpu_epoch_times.json
# (step 5), table1_report.md (step 4's analysis) and visit.tar.gz (the work folder: every JSON, the
# packing stores, the Table 1 store and its report), re-packed after every step. $OUT defaults to
# benchmarks/out/gpu; the work folder is $GPU_VISIT_WORK or /tmp/deba-gpu-visit (emptied by a run that
# starts with step 1); Tune's checkpoints go to $GPU_VISIT_RAY_STORAGE or /tmp/deba-gpu-visit-ray.
#
# Ray: when `import ray` fails and .raybundle/ray-py312.tar.xz exists (built here by
# `bash ../shared/tools/ray-gpu-bundle.sh`), it is unpacked to /tmp/deba-ray-site and put on PYTHONPATH;
# without Ray step 3 is skipped with a message and step 4 runs in-process (GPU_VISIT_NO_RAY=1 forces it).
# Fashion-MNIST: .data/fashion-mnist/*.gz (git-ignored; `mkdir -p .data/fashion-mnist && cp
# /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/`), else where trainables/data.py finds it.
# Set DEBA_COMMIT to the checkout's commit (the device copy has no .git): it goes into every result.
#
# Plumbing mode (no GPU: CPU, tiny sizes, seconds per step, 400 s limits; every step still writes its files):
#   GPU_VISIT_PLUMBING=1 OUT=/tmp/gv bash benchmarks/run_gpu.sh        (~8 min on the shared 2-core CPU)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-benchmarks/out/gpu}"
WORK="${GPU_VISIT_WORK:-/tmp/deba-gpu-visit}"
PY="${PYTHON:-python3}"
PLUMBING="${GPU_VISIT_PLUMBING:-0}"
KILL_AFTER="${KILL_AFTER:-20}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
if [ "$PLUMBING" = 1 ]; then
  DEVICE=cpu; QUICK=(--quick)
else
  DEVICE=cuda; QUICK=()
fi
lim() { # lim NAME GPU_DEFAULT: $LIMIT_<NAME>, else the GPU default (plumbing: a generous CPU limit)
  local var="LIMIT_$1"
  if [ -n "${!var:-}" ]; then echo "${!var}"; elif [ "$PLUMBING" = 1 ]; then echo 400; else echo "$2"; fi
}

# The steps to run.
STEPS=()
for a in "${@:-all}"; do
  case "$a" in
    all) STEPS+=(smoke bench packing table1 epoch_times) ;;
    part1) STEPS+=(smoke bench packing epoch_times) ;;
    part2) STEPS+=(table1) ;;
    smoke|bench|packing|table1|epoch_times) STEPS+=("$a") ;;
    *) echo "unknown step '$a': use all, part1, part2, smoke, bench, packing, table1 or epoch_times" >&2; exit 2 ;;
  esac
done
has() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd)
LOG="$OUT/log.txt"
# A visit that starts with step 1 starts from an empty work folder (our own subfolders only).
if has smoke; then rm -rf "$WORK/bench" "$WORK/packing" "$WORK/table1"; fi
mkdir -p "$WORK/bench"

{
  echo "steps=${STEPS[*]} plumbing=$PLUMBING commit=${DEBA_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "start=$(date -u +%FT%TZ) out=$OUT work=$WORK"
} | tee -a "$LOG"

# Ray: importable here, or unpacked from the bundle.
RAY_OK=0
if [ "${GPU_VISIT_NO_RAY:-0}" != 1 ]; then
  if "$PY" -c "import ray, ray.tune" 2>/dev/null; then
    RAY_OK=1
  elif [ -f .raybundle/ray-py312.tar.xz ]; then
    site=/tmp/deba-ray-site
    echo "unpacking .raybundle/ray-py312.tar.xz to $site" | tee -a "$LOG"
    mkdir -p "$site" && tar -C "$site" -xJf .raybundle/ray-py312.tar.xz
    if err=$(PYTHONPATH="$site:$PYTHONPATH" "$PY" -c "import ray, ray.tune" 2>&1); then
      export PYTHONPATH="$site:$PYTHONPATH"; RAY_OK=1
    else
      echo "the Ray bundle does not import: ${err: -600}" | tee -a "$LOG"
    fi
  fi
fi
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  "$PY" -c "import ray; print('ray', ray.__version__)" 2>/dev/null || echo "ray: not importable"
  nproc; free -g 2>/dev/null | head -2
} > "$OUT/nvidia-smi.txt" 2>&1
tee -a "$LOG" < "$OUT/nvidia-smi.txt"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device here: run with GPU_VISIT_PLUMBING=1 for the CPU plumbing check" | tee -a "$LOG"
  exit 1
fi
[ "$RAY_OK" = 1 ] && echo "Ray: importable" | tee -a "$LOG" \
  || echo "Ray: NOT available (no ray, no usable .raybundle, or GPU_VISIT_NO_RAY=1)" | tee -a "$LOG"
# Tune's experiments and checkpoints: outside the work folder (not packed), kept between the calls of a
# visit on the GPU (a stopped Table 1 resumes from them: same command, TABLE1_EPOCHS=<the N it printed>).
RAY_STORAGE="${GPU_VISIT_RAY_STORAGE:-/tmp/deba-gpu-visit-ray}"
if has smoke; then rm -rf "$RAY_STORAGE"; fi
mkdir -p "$RAY_STORAGE"
[ "$PLUMBING" = 1 ] && trap 'rm -rf "$RAY_STORAGE"' EXIT

[ -s "$OUT/steps.tsv" ] || printf 'step\tlimit_s\tseconds\texit\n' > "$OUT/steps.tsv"
FILTER='^(│|╭|╰|├)|View detailed results|INFO tune.py|To visualize your results|sample_from functions that take|^$'
run() { # run NAME LIMIT CMD...: one command under its time limit; its exit code and seconds in steps.tsv
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=INT --kill-after="$KILL_AFTER" "$limit" "$@" 2>&1 | grep --line-buffered -v -E "$FILTER" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - t0))" "$rc" >> "$OUT/steps.tsv"
  [ "$rc" = 0 ] || echo "--- $name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)')" | tee -a "$LOG"
  return 0
}
extra() { # the words of $ARGS_<NAME> (extra arguments for one step, e.g. ARGS_SMOKE="--archs resnet18")
  local var="ARGS_$1"; EXTRA=(); read -r -a EXTRA <<< "${!var:-}"
}
bench() { # bench NAME LIMIT MODULE [ARGS...]  (+ $ARGS_<NAME>)
  local name=$1 limit=$2 mod=$3; shift 3
  extra "$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  run "$name" "$limit" "$PY" -m "benchmarks.$mod" --device "$DEVICE" --out "$WORK/bench" "${QUICK[@]}" "$@" "${EXTRA[@]}"
}
pack() { # the returned files, after every step
  "$PY" -m benchmarks.tables "$WORK/bench" > "$OUT/tables.md" 2>/dev/null || true
  cp "$OUT/steps.tsv" "$LOG" "$WORK/" 2>/dev/null
  tar -czf "$OUT/visit.tar.gz.tmp" -C "$WORK" . && mv "$OUT/visit.tar.gz.tmp" "$OUT/visit.tar.gz"
}

for step in "${STEPS[@]}"; do
  case "$step" in
    smoke)
      bench smoke "$(lim SMOKE 60)" bench_smoke ;;
    bench)
      if [ "$PLUMBING" = 1 ]; then
        bench signals "$(lim SIGNALS 25)" bench_signals
        bench data "$(lim DATA 30)" bench_data
        bench batch_curve "$(lim BATCH_CURVE 60)" bench_batch
        bench speedups "$(lim SPEEDUPS 40)" bench_speedups
        bench orchestration "$(lim ORCHESTRATION 25)" bench_orchestration --no-ray --batch-curve-json latest
      else
        bench signals "$(lim SIGNALS 25)" bench_signals --train-limit 2048
        bench data "$(lim DATA 30)" bench_data --samples 4096
        bench batch_curve "$(lim BATCH_CURVE 60)" bench_batch --samples 2048 --budget-s 3
        bench speedups "$(lim SPEEDUPS 40)" bench_speedups --repeats 2 \
          --variants plain,bf16,channels_last,fused_sgd,default,cudnn_benchmark
        bench orchestration "$(lim ORCHESTRATION 25)" bench_orchestration --no-ray --batch-curve-json latest
      fi ;;
    packing)
      if [ "$RAY_OK" = 1 ]; then
        p_args=(); [ "$PLUMBING" = 1 ] || p_args=(--samples 12288)
        bench packing "$(lim PACKING 75)" bench_packing --work "$WORK/packing" --storage "$RAY_STORAGE/packing" "${p_args[@]}"
        rm -rf "$RAY_STORAGE/packing"  # 15 resnet18 checkpoints: not needed after the step
      else
        echo "=== packing: SKIPPED: Ray is not available (build .raybundle here with 'bash ../shared/tools/ray-gpu-bundle.sh' and carry it)" | tee -a "$LOG"
        printf 'packing\t0\t0\tskipped-no-ray\n' >> "$OUT/steps.tsv"
      fi ;;
    table1)
      data=(); [ -d .data/fashion-mnist ] && data=(--data-dir "$ROOT/.data")
      found=$("$PY" -m benchmarks.gpu_visit find-fashion-mnist "${data[@]:1}" 2>&1); found_rc=$?
      echo "$found" | tee -a "$LOG"
      if [ "$found_rc" != 0 ]; then
        echo "=== table1: SKIPPED: no Fashion-MNIST IDX files (copy /usr/share/datasets/fashion-mnist/*.gz to .data/fashion-mnist/ and carry .data)" | tee -a "$LOG"
        printf 'table1\t0\t0\tskipped-no-data\n' >> "$OUT/steps.tsv"
      else
        limit=$(lim TABLE1 360)
        t_args=(--work "$WORK" --bench-dir "$WORK/bench" --storage "$RAY_STORAGE/table1" --limit-s "$limit" "${data[@]}")
        [ "$RAY_OK" = 1 ] || t_args+=(--ray no)
        if [ "$PLUMBING" = 1 ]; then
          t_args+=(--epochs "${TABLE1_EPOCHS:-2}" --gpus-per-trial 0 --setting train_limit=128 --setting test_limit=64 --setting threads=1)
        else
          t_args+=(--epochs "${TABLE1_EPOCHS:-auto}")
        fi
        extra TABLE1
        run table1 "$limit" "$PY" -m benchmarks.gpu_visit table1 "${t_args[@]}" "${EXTRA[@]}"
        run analysis "$(lim ANALYSIS 20)" "$PY" -m analysis "$WORK/table1" --study table1_full --out "$WORK/table1/report" --no-plots
        cp "$WORK/table1/report/report.md" "$OUT/table1_report.md" 2>/dev/null || echo "no table1 report" | tee -a "$LOG"
      fi ;;
    epoch_times)
      run epoch_times "$(lim EPOCH_TIMES 15)" "$PY" -m benchmarks.gpu_visit epoch-times "$WORK/bench" "$OUT/gpu_epoch_times.json" ;;
  esac
  pack
done
echo "end=$(date -u +%FT%TZ)" | tee -a "$LOG"
if command -v column >/dev/null; then column -t -s $'\t' "$OUT/steps.tsv"; else cat "$OUT/steps.tsv"; fi | tee -a "$LOG"
pack
