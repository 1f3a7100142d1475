"""Data pipeline speed: images/s of the training batches alone, next to the images/s of the training step.

    python bench/loader.py                # the demo preset, about a minute on 2 cores

The pipeline (read, decode, resize, flip, normalize, collate, in `data.num_workers` worker processes) is timed by
pulling batches from scratchdet's batch stream with no model; the step is timed on batches already in memory. The
pipeline keeps the model fed when its images/s exceeds the step's: the ratio says by how much.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

import common
from scratchdet.config import load_config
from scratchdet.engine.detection import build_detection, train_batches
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import seed_everything
from train_step import DATA, ensure_data


def pipeline_images_per_s(preset: str, overrides: list[str], batches: int) -> float:
    config = load_config(preset, overrides)
    setup = build_detection(config, torch.device("cpu"), quiet=True)
    stream = train_batches(setup.dataset, config, 0)
    next(stream)  # worker start-up is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * config.solver.images_per_batch / (time.perf_counter() - started)


def step_images_per_s(preset: str, overrides: list[str], steps: int) -> float:
    config = load_config(preset, overrides)
    seed_everything(0)
    setup = build_detection(config, torch.device("cpu"), quiet=True)
    cached = list(itertools.islice(train_batches(setup.dataset, config, 0), 4))
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, itertools.cycle(cached))
    trainer.run_step()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    return steps * config.solver.images_per_batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo/mask_rcnn")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data.num_workers to try")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "loader.json")
    args = parser.parse_args()
    ensure_data()
    overrides = [f"data.root={DATA}"]
    step = step_images_per_s(args.preset, overrides, args.steps)
    rows = [{"what": "training step (batches in memory)", "images_per_s": step, "pipeline_over_step": ""}]
    for workers in args.workers:
        rate = pipeline_images_per_s(args.preset, [*overrides, f"data.num_workers={workers}"], args.batches)
        rows.append({"what": f"pipeline, {workers} workers", "images_per_s": rate, "pipeline_over_step": rate / step})
    print(common.table(rows, ["what", "images_per_s", "pipeline_over_step"]))
    common.write_json(args.out, "loader", rows, preset=args.preset)


if __name__ == "__main__":
    main()
