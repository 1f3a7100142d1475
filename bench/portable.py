"""What portable arithmetic costs: seconds per training step of the CPU demo's model, with and without --portable.

    python bench/portable.py             # 2 rounds of 3 runs of 30 steps, about 6 minutes on 2 cores
    python bench/portable.py --rounds 3 --steps 40

Each run is `scratchdet train` on the demo preset in a process of its own (the settings are chosen once per
process), alternating in rounds so that the machine's speed cancels in the ratios:
  native         this CPU's fastest kernels, oneDNN, the threads PyTorch picks (a `scratchdet train` alone);
  native, 1 thr  the same on one thread (what each of the CPU demo's two arms at once gets);
  portable       `scratchdet --portable`: AVX2 kernels, MKL's COMPATIBLE branch, no oneDNN, one thread.
Reported: the median seconds per step after the first 10, and each variant against `native, 1 thr`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from train_step import DATA, ensure_data

VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "native": ([], {}),
    "native, 1 thr": ([], {"OMP_NUM_THREADS": "1"}),
    "portable": (["--portable"], {}),
}
WARMUP = 10


def seconds_per_step(flags: list[str], environment: dict[str, str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        schedule = f"{steps * 8 / (90000 * 16):.9f}x"  # 1x = 90k steps of 16 images; the demo trains 8 at a time
        subprocess.run(
            [sys.executable, "-m", "scratchdet", *flags, "train", "--out", str(run), "demo/mask_rcnn",
             f"data.root={DATA}", "data.train_annotations=annotations/instances_train.json", "data.train_images=train",
             "data.val_annotations=annotations/instances_val.json", "data.val_images=val", "data.num_workers=0",
             "solver.base_epochs=null", f"solver.schedule={schedule}", "eval.max_images=2", "output.log_period=1"],
            env={**os.environ, **environment}, capture_output=True, check=True,
        )  # fmt: skip
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["seconds_per_iteration"] for r in records if "seconds_per_iteration" in r and r["iteration"] > WARMUP]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "portable.json")
    args = parser.parse_args()
    ensure_data()
    measured: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (flags, environment) in VARIANTS.items():
            measured[name].append(seconds_per_step(flags, environment, args.steps))
    baseline = statistics.median(measured["native, 1 thr"])
    rows = [
        {"variant": name, "s/step": statistics.median(times), "vs native, 1 thr": statistics.median(times) / baseline}
        for name, times in measured.items()
    ]
    print(common.machine())
    print(common.table(rows, ["variant", "s/step", "vs native, 1 thr"]))
    common.write_json(args.out, "portable", rows, steps=args.steps, rounds=args.rounds)


if __name__ == "__main__":
    main()
