#!/usr/bin/env bash
# On a machine with a GPU: size the GPU demo to this GPU (tools/gpu_demo_calibration.py --apply, one to two minutes),
# then run it from fresh data, timed, with the GPU's utilization logged. Everything lands in $OUT (default
# runs/bench/gpu_demo): machine.txt, calibration.{log,json}, demo.log, dmon.txt and results.tgz (the report, every
# run's summary, metrics and console, and the files the calibration wrote) and evaluations.tgz (the saved
# evaluations, for `scratchdet report` elsewhere, where under 15 MB). The demo is stopped when LIMIT seconds
# (default 580) less RESERVE have passed since the start, leaving time for a report of what finished and to pack
# the results. CALIBRATE=0 keeps the committed size (the numbers an earlier calibration on the same kind of GPU
# wrote) and gives the demo the whole LIMIT. DEMO_ARGS are passed to `scratchdet demo`, e.g. DEMO_ARGS="--objects 1 3
# --radius 0.25 0.45" for easier scenes (kept in data/demo_gpu and runs/demo_gpu all the same).
# Usage: [CALIBRATE=0] [BUDGET=420] [LIMIT=580] [RESERVE=60] [DEMO_ARGS=...] bash bench/gpu_demo.sh
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-runs/bench/gpu_demo}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
{ nvidia-smi; $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/machine.txt" 2>&1
rm -rf data/demo_gpu runs/demo_gpu
if [ "${CALIBRATE:-1}" != 0 ]; then
  $PY tools/gpu_demo_calibration.py --apply --budget "${BUDGET:-420}" --out "$OUT/calibration.json" 2>&1 \
    | grep -v -i -E "warn|rationality" | tee "$OUT/calibration.log"
fi
grep -n "^DEMO_GPU" src/scratchdet/data/synthetic.py src/scratchdet/demo.py
grep -n -E "period=|train_subset:|seed:" src/scratchdet/configs/demo/study_gpu.yaml
(nvidia-smi dmon -s u -d 10 > "$OUT/dmon.txt" 2>&1 &)
# A demo stopped at the limit leaves finished arms and no report: RESERVE seconds (default 60) are kept to write
# the report of what finished (`scratchdet report`), so that a device session still yields curves and a timeline.
reserve=${RESERVE:-60}
left=$(( ${LIMIT:-580} - reserve - ($(date +%s) - T0) ))
echo "the demo starts $(( $(date +%s) - T0 )) s in; stopped after $left s"
started=$(date +%s)
# shellcheck disable=SC2086  # DEMO_ARGS is a list of arguments
timeout "$left" $PY -m scratchdet demo --data data/demo_gpu --out runs/demo_gpu ${DEMO_ARGS:-} > "$OUT/demo.log" 2>&1
code=$?
echo "demo exit $code, wall $(( $(date +%s) - started )) s" | tee -a "$OUT/demo.log"
if [ "$code" = 124 ]; then
  echo "stopped at the limit: the report of the finished arms" | tee -a "$OUT/demo.log"
  timeout $(( reserve - 10 )) $PY -m scratchdet report runs/demo_gpu >> "$OUT/demo.log" 2>&1
  echo "partial report exit $?" | tee -a "$OUT/demo.log"
fi
grep -v -i -E "warn|rationality|it/s\]|s/it\]" "$OUT/demo.log" | tail -45
tar czf "$OUT/results.tgz" runs/demo_gpu/report runs/demo_gpu/study.yaml runs/demo_gpu/arms/*/summary.json \
  runs/demo_gpu/arms/*/metrics.jsonl runs/demo_gpu/arms/*/console.txt runs/demo_gpu/arms/*/config.yaml runs/demo_gpu/pretrain/*/summary.json \
  runs/demo_gpu/pretrain/*/metrics.jsonl src/scratchdet/data/synthetic.py src/scratchdet/demo.py \
  src/scratchdet/configs/demo/study_gpu.yaml 2>/dev/null
# The saved evaluations let `scratchdet report` rebuild the report elsewhere; kept where they fit a transfer.
tar czf "$OUT/evaluations.tgz" runs/demo_gpu/arms/*/evaluations 2>/dev/null
[ "$(stat -c %s "$OUT/evaluations.tgz")" -lt 15000000 ] || rm -f "$OUT/evaluations.tgz"
echo "total $(( $(date +%s) - T0 )) s"
