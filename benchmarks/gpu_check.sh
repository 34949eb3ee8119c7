#!/usr/bin/env bash
# One-shot check on a GPU machine that has torch, triton and nvcc but no internet:
# build with the preinstalled torch, run the GPU tests, run the GPU benchmarks, and leave
# logs and results under OUTDIR. Fails fast; prints a short table last. Budget: 8 minutes
# on one H200 (build ~3, tests ~2, benchmarks ~3).
#
#   bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail

usage() { echo "usage: $0 OUTDIR   (writes build.log, info.txt, tests.log, bench.log and results there)"; }
if [ $# -ne 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  usage >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "cannot create OUTDIR $1" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
  exit 3
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.log, stop on failure
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  if [ $rc -ne 0 ]; then
    tail -n 40 "$OUT/$name.log"
    exit $rc
  fi
}

: >"$OUT/summary.txt"
# Only the GPU in front of us: one arch keeps the build short.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export MAX_JOBS=${MAX_JOBS:-16} SEER_KERNELS_CUDA=1
step build 240 "$PY" -m pip install --no-build-isolation --no-deps -e .
step info 60 "$PY" -m seer_kernels.info
cp "$OUT/info.log" "$OUT/info.txt"
step tests 150 "$PY" -m pytest -m gpu -x -q -p no:cacheprovider tests
step bench 200 "$PY" -m benchmarks.run --out "$OUT" --no-readme
echo
cat "$OUT/summary.txt"
echo
tail -n 30 "$OUT/bench.log"
