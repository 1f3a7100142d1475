#!/usr/bin/env bash
# On a machine with a GPU: the CUDA path of the CLI end to end (a tiny bf16 + channels-last run on generated data,
# then its evaluation), then bench/gpu.py. Results go to $OUT (default runs/bench). Usage: bash bench/gpu_check.sh
set -euo pipefail
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
work=$(mktemp -d)
$PY -m scratchdet data synth --out "$work/data" --train-images 64 --val-images 16 --workers 8
tiny="data.root=$work/data data.min_size=[96] data.max_size=128 data.test_size=96 eval.max_images=16
  solver.base_epochs=null solver.schedule=0.0001x solver.images_per_batch=4 solver.warmup_iters=5 output.log_period=9"
$PY -m scratchdet train demo/mask_rcnn $tiny solver.precision=bf16 solver.channels_last=true --out "$work/run" \
  2>&1 | tail -4
$PY -m scratchdet eval "$work/run"
$PY bench/gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
