#!/usr/bin/env bash
# One call on a lent GPU machine (torch, triton and nvcc preinstalled, no internet): the
# launch audit (and, by default only where no GPU is visible, the sm_90 resource check):
# these need no GPU, and on a machine without one the script runs them and stops there; then build the extension in place against that torch
# (unless one built beforehand for the same torch and Python is there and imports), run
# the GPU tests with a short bf16 training run beside them, time the Sinkhorn's backends
# and paths at the per-GPU shapes (benchmarks/sinkhorn_gpu.py: eager and from a CUDA
# graph, against plain and compiled plain, and the order per size class the numbers
# imply), then the benchmarks. Results go to OUTDIR, logs to OUTDIR/logs. A failing stage
# is recorded and the next one still runs, so one call brings back all it can; the exit
# status is the first failure's. Prints a summary last.
#
#   bash benchmarks/gpu_check.sh OUTDIR [STAGES]
#
# STAGES: comma-separated, any of audit,resources,build,tests,train,sinkhorn,bench
# (default: all of them; `resources`, the sm_90 compile of every launch configuration,
# only where no GPU is visible: CI checks it against the committed table, and on a GPU
# machine its few minutes of compiling go to the timings instead).
# Limits: audit 120 s, resources 300 s, build 170 s (0 with a prebuilt extension), tests 150 s (training
# beside them), sinkhorn 150 s, benchmarks what is left of GPU_CHECK_BUDGET (default
# 470 s, so that a call with a prebuilt extension ends within 8 minutes).
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [STAGES]   (STAGES: audit,resources,build,tests,train,sinkhorn,bench; logs and results go to OUTDIR)"; }
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  usage >&2
  exit 2
fi
OUT=$(mkdir -p "$1/logs" && cd "$1" && pwd) || { echo "cannot create OUTDIR $1" >&2; exit 2; }
LOGS=$OUT/logs
STAGES=${2:-audit,resources,build,tests,train,sinkhorn,bench}
for s in ${STAGES//,/ }; do
  case $s in audit | resources | build | tests | train | sinkhorn | bench) ;;
  *) echo "unknown stage '$s'" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
BUDGET=${GPU_CHECK_BUDGET:-470}

want() { [[ ",$STAGES," == *",$1,"* ]]; }
status=0
record() {  # record NAME RC SECONDS
  echo "$1: exit $2 in $3 s" | tee -a "$OUT/summary.txt"
  if [ "$2" -ne 0 ] && [ $status -eq 0 ]; then status=$2; fi
}
step() {  # step NAME SECONDS CMD...: run under a time limit, log to OUTDIR/logs/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  record "$name" $rc $((SECONDS - t0))
  [ $rc -eq 0 ] || tail -n 25 "$LOGS/$name.log"
  return $rc
}
cuda_extension_ok() {
  "$PY" -c "from seer_kernels import _backend as b; import sys; sys.exit(0 if b._C_HAS_CUDA else 1)" 2>/dev/null
}

: >"$OUT/summary.txt"
has_gpu() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if [ $# -lt 2 ] && has_gpu; then STAGES=${STAGES/resources,/}; fi
if want audit; then
  # Launch counts, allocations, syncs and compile graphs on fake CUDA tensors: what the
  # timings below should agree with.
  step audit 120 env -u TRITON_INTERPRET "$PY" -m benchmarks.audit && cat "$LOGS/audit.log"
fi
if want resources; then
  # No register spills at sm_90, and the committed table current.
  step resources 300 env -u TRITON_INTERPRET "$PY" -m benchmarks.triton_resources --check
fi
if ! has_gpu; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False): the audit" \
    "ran; build, tests, train, sinkhorn and bench need a GPU, stopping here" >&2
  cat "$OUT/summary.txt"
  exit 3
fi
nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || true

if want build; then
  if cuda_extension_ok; then
    record build-prebuilt 0 0
  else
    # Only the GPU in front of us: one arch keeps the build short.
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    if ! SEER_KERNELS_CUDA=1 step build 170 "$PY" setup.py build_ext --inplace; then
      # Still check the Triton kernels: a CPU-only extension builds in a fraction of that.
      SEER_KERNELS_CUDA=0 step build-cpu-only 90 "$PY" setup.py build_ext --inplace
    fi
  fi
fi
step info 60 "$PY" -m seer_kernels.info && cat "$LOGS/info.log"

if want train; then
  # A short bf16 run of the default recipe on the GPU, beside the tests (it is not timed
  # against anything; the tests check numbers, this checks the trainer's CUDA path).
  (
    t0=$SECONDS
    timeout -k 10 200 "$PY" -m seer.train -c configs/default.yaml run_dir="$LOGS/train_run" \
      train.max_steps=120 train.precision=bf16 train.threads=4 data.num_workers=6 >"$LOGS/train.log" 2>&1
    echo "$? $((SECONDS - t0))" >"$LOGS/train.rc"
  ) &
  train_pid=$!
fi
if want tests; then
  xdist=()
  if "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n 8); fi  # Triton compiles in parallel
  # The op test files, from the op declaration (seer_kernels/_registry.py).
  read -ra op_tests < <("$PY" -c "from seer_kernels import _registry; print(' '.join(_registry.op_test_files()))")
  step tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rfE --timeout 120 "${xdist[@]}" \
    --junitxml="$LOGS/tests.xml" tests/test_gpu.py "${op_tests[@]}"
  tail -n 3 "$LOGS/tests.log"
fi
if want train; then
  wait "$train_pid"
  read -r rc secs <"$LOGS/train.rc"
  record train "$rc" "$secs"
  grep -E "images/s|loss" "$LOGS/train.log" | tail -n 3
  rm -rf "$LOGS/train_run"
fi
if want sinkhorn; then
  step sinkhorn 150 "$PY" -m benchmarks.sinkhorn_gpu --out "$OUT" && tail -n 45 "$LOGS/sinkhorn.log"
fi
if want bench; then
  limit=$((BUDGET - SECONDS - 40))
  [ $limit -gt 300 ] && limit=300
  if [ $limit -lt 60 ]; then
    record bench-skipped-no-time 0 0
  else
    step bench $((limit + 30)) "$PY" -m benchmarks.run --out "$OUT" --no-readme --time-budget $limit
  fi
  tail -n 40 "$LOGS/bench.log"
fi
echo
cat "$OUT/summary.txt"
exit $status
