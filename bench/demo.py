"""Wall time of `make demo`'s work and of each of its stages.

    python bench/demo.py                   # fresh data and a fresh study under runs/bench/demo: ~15 minutes
    python bench/demo.py --jobs 1          # the same with one arm at a time
    python bench/demo.py --existing DIR    # read the stages of a finished study directory, run nothing

Stages: generating and checking the data (`scratchdet demo --check-only` into an empty folder), then the study
(`scratchdet demo`), broken down by the run directories it leaves: pre-training and each arm (their own wall
time, as summary.json records it; arms may overlap when --jobs > 1), and the rest (planning, forks, the report).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

OUT = common.REPO / "runs" / "bench" / "demo"


def timed_command(*args: str) -> float:
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONPATH": str(common.REPO / "src")}
    subprocess.run([sys.executable, "-m", "scratchdet", *args], check=True, cwd=common.REPO, env=environment)
    return time.perf_counter() - started


def stages(study: Path) -> list[dict[str, Any]]:
    """One row per run directory of a finished study: its wall time, iterations and images/s."""
    rows = []
    for summary_path in sorted(study.glob("*/*/summary.json")):
        summary = json.loads(summary_path.read_text())
        wall = float(summary.get("wall_seconds_this_session", 0.0))
        images = summary.get("counts", {}).get("images", 0)
        train_seconds = summary.get("train_seconds") or 0.0
        rows.append({"stage": str(summary_path.parent.relative_to(study)), "seconds": wall,
                     "iterations": summary.get("iteration"),
                     "train_images_per_s": images / train_seconds if train_seconds else ""})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None, help="passed to scratchdet demo (default: its own)")
    parser.add_argument("--existing", type=Path, help="a finished study directory to read instead of running")
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "demo.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.existing is None:
        shutil.rmtree(OUT, ignore_errors=True)
        data_seconds = timed_command("demo", "--check-only", "--data", str(OUT / "data"))
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        study_seconds = timed_command("demo", "--data", str(OUT / "data"), "--out", str(OUT / "study"), *jobs)
        rows.append({"stage": "data generation and check", "seconds": data_seconds})
        rows.append({"stage": "study (everything below)", "seconds": study_seconds})
        study = OUT / "study"
    else:
        study = args.existing
    rows += stages(study)
    print(common.table(rows, ["stage", "seconds", "iterations", "train_images_per_s"]))
    common.write_json(args.out, "demo", rows, study=str(study), jobs=args.jobs)


if __name__ == "__main__":
    main()
