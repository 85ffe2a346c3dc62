#!/usr/bin/env bash
# Run ON the lent GPU machine, from the repo root, with .whl carried (see fetch_wheels.sh):
#   run(command="bash benchmarks/device/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Stage I's GPU figures in one go: the speed benchmark on CUDA (tiny model and the full-size
# SD1.5 architecture at 256 px, bf16, naive reference alongside, ImageNet-1K projection), then
# the SD1.5 part again with a larger batch. Everything lands in $OUT (or outputs/device).
# DEVICE and BENCH_ARGS (appended, so they win) allow a dry run on a CPU:
#   DEVICE=cpu BENCH_ARGS="--quick --models tiny --batch-size 2 --unet-batch 32" bash benchmarks/device/gpu_check.sh
set -euo pipefail
OUT=${OUT:-outputs/device}
mkdir -p "$OUT"
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in .whl/: run benchmarks/device/fetch_wheels.sh where pip works," \
    "then carry .whl to this machine (run(..., carry=[\".whl\"]))" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.csv"
fi
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
python3 benchmarks/score_bench.py --device "$DEVICE" --out "$OUT/score_bench_cuda.json" \
  $BENCH_ARGS 2>&1 | tee "$OUT/score_bench_cuda.log"
python3 benchmarks/score_bench.py --device "$DEVICE" --models sd15 --batch-size 32 --unet-batch 256 \
  --out "$OUT/score_bench_cuda_b32.json" $BENCH_ARGS 2>&1 | tee "$OUT/score_bench_cuda_b32.log"
