#!/usr/bin/env bash
# Run HERE (a machine with pip access) before a GPU check: downloads into .whl/ the wheels the
# scoring benchmark needs that the lent GPU machine's image lacks (it has torch, lightning,
# numpy, pillow, tqdm, matplotlib, accelerate, safetensors, timm, ... but not these), at the
# versions this repo's .venv was tested with. The GPU machine has Python 3.12 and no network.
#   bash benchmarks/device/fetch_wheels.sh      # then: run(command="bash benchmarks/device/gpu_check.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
# transformers, tokenizers and huggingface_hub stay the image's own (5.17 / 0.23.2 / 1.33 in 2026-11):
# newer ones would need packages (httpx2, a newer regex) that the image lacks.
pkgs=(diffusers hydra-core omegaconf open_clip_torch ftfy wcwidth)
specs=()
for p in "${pkgs[@]}"; do specs+=("$p==$(ver "$p")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${specs[@]}"
# omegaconf's parser runtime is published as an sdist only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
ls -la .whl && du -sh .whl
