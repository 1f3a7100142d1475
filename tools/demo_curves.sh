#!/usr/bin/env bash
# How far the CPU demo's training curves are from flat, on the demo's scenes and on easier ones (what
# `scratchdet demo --objects 1 3 --radius 0.25 0.45` trains on): the demo's study (configs/demo/study.yaml: its
# model, pre-training and scenes of three categories) with 1x = one pass over the 2,000 training scenes (250
# iterations) and longer schedules, one seed. Each study's report says, per init, what its longest schedule gains
# over a shorter one. About 10-13 minutes a study of 1x, 2x, 4x on 2 cores; 4x, 8x about 15; 8x, 16x about 40.
#
# Usage: [SCHEDULES="1x, 2x, 4x"] [OUT=runs/demo_curves] bash tools/demo_curves.sh [demo] [easy]
#   demo: the demo's scenes (2-6 objects of radius 0.16-0.45); easy: 1-3 objects of radius 0.25-0.45
# Data goes to data/demo_curves/<scenes>, each study to $OUT/<scenes>_<schedules>; run again to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEDULES=${SCHEDULES:-1x, 2x, 4x}
OUT=${OUT:-runs/demo_curves}
PY=${PYTHON:-.venv/bin/python}
[ $# -gt 0 ] || set -- demo easy
for scenes in "$@"; do
  case $scenes in
    demo) difficulty=() ;;
    easy) difficulty=(--objects 1 3 --radius 0.25 0.45) ;;
    *) echo "unknown scenes '$scenes': give demo or easy" >&2; exit 2 ;;
  esac
  data=$PWD/data/demo_curves/$scenes
  [ -f "$data/synth.json" ] || $PY -m scratchdet data synth --out "$data" --categories 3 "${difficulty[@]}"
  study=$OUT/${scenes}_$(echo "$SCHEDULES" | tr -d ' ' | tr ',' '-')
  mkdir -p "$OUT"
  # The packaged demo study (its base and pre-training) with this data, 1x = one pass, $SCHEDULES.
  $PY -c '
import sys, yaml
path, data, schedules, scenes = sys.argv[1:]
spec = yaml.safe_load(open("src/scratchdet/configs/demo/study.yaml"))
spec["description"] = f"the CPU demo curves on the {scenes} scenes ({schedules})"
kept = [o for o in spec["overrides"] if not o.startswith(("solver.base_epochs=", "eval.", "output."))]
spec["overrides"] = kept + ["solver.base_epochs=1.0", "eval.period=125", "eval.max_images=150",
    "eval.final_all_images=true", "output.checkpoint_period=125", f"data.root={data}", f"pretrain.root={data}/classification"]
spec["axes"]["schedule"] = [s.strip() for s in schedules.split(",")]
open(path, "w").write(yaml.safe_dump(spec, sort_keys=False))
' "$study.yaml" "$data" "$SCHEDULES" "$scenes"
  $PY -m scratchdet study "$study.yaml" --out "$study" --jobs 2
  sed -n '/^| init /,/^$/p' "$study/report/report.md"
  grep -o -E "(scratch|pretrained): [0-9.]+x gains [^)]*\)" "$study/report/report.md" | sort -u
done
