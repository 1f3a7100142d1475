"""Size the GPU demo (`scratchdet demo` on a CUDA machine) to a wall-time budget on this machine's GPU.

    python tools/gpu_demo_calibration.py                  # measure and print the plan (about a minute)
    python tools/gpu_demo_calibration.py --apply          # ... and write it into the demo's files
    python tools/gpu_demo_calibration.py --budget 420     # seconds from generating the data to the report

The GPU demo keeps the paper's proportions fixed (1x = 12 epochs, arms up to 6x, two seeds, the cost-matched arm):
its wall time then grows with the number of training scenes, the one number this tool chooses. It measures, on small
generated data, the training step of the demo's model with 1, 4 and 8 processes sharing the GPU at once (they all
start timing together), the evaluation of 100 scenes, and the pre-training step; then it predicts the demo's wall
time along its longest chain (pre-training, then the cost-matched scratch arm, 6x plus pre-training's pixels, with
its evaluations, then the report) for each number of arms at once, and picks the largest training set, in hundreds,
whose prediction fits the budget. Nothing here looks at AP: the size is chosen for time alone.

--apply writes the training-set size (`DEMO_GPU_TRAIN_IMAGES`, data/synthetic.py), the arms trained at once
(`DEMO_GPU_JOBS`, demo.py) and the evaluation and checkpoint periods (half a 1x, configs/demo/study_gpu.yaml).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from scratchdet.engine.mps import mps_server

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "scratchdet"
PRESET = "demo/mask_rcnn_gpu"
EPOCHS_PER_1X = 12  # study_gpu.yaml: solver.base_epochs
LONGEST = 6  # the longest regular schedule, in 1x units
# The cost-matched arm sees pre-training's pixels plus 6x fine-tuning, so it is the longest chain: pre-training's
# pixels are worth this many detection iterations of 16 images whatever the training-set size (the dry run at 400
# scenes: matched to pre-training + 1x was 5.12x of 300 iterations, 4.12 x 300 of them pre-training's).
PRETRAIN_AS_ITERATIONS = 1236
EVALS_PER_1X = 2  # periodic evaluations per 1x (the period is half a 1x)
CONCURRENCY = [1, 4, 8]
WARMUP_STEPS = 8
# Seconds outside training that the measurements do not cover, along the longest chain: checking the data and
# planning (10), starting the pre-training and the arm processes (2 x 8), the report (45). Estimates: the report's
# share is the least known, so the budget should keep a margin.
FIXED_SECONDS = 10 + 16 + 45


def probe_data(root: Path) -> None:
    from scratchdet.data.synthetic import SynthSpec, existing_spec, generate

    spec = SynthSpec(
        train_images=160, val_images=100, classification_train_per_class=16, classification_val_per_class=4
    )
    if existing_spec(root) != spec:
        generate(root, spec, quiet=True)


def probe_config(root: Path) -> Any:
    from scratchdet.config import load_config

    return load_config(PRESET, [f"data.root={root}", f"pretrain.root={root / 'classification'}",
                                "eval.max_images=100"])  # fmt: skip


def _wait_for_all(ready_dir: Path, count: int, name: str) -> None:
    """A file barrier: the processes of one measurement start timing together."""
    (ready_dir / name).touch()
    while len(list(ready_dir.iterdir())) < count:
        time.sleep(0.05)


def worker(
    root: Path, ready_dir: Path, count: int, index: int, pretrain: bool, device_name: str, steps: int
) -> dict[str, float]:
    """One process of a measurement: seconds per detection training step (and per evaluation of 100 scenes, and per
    pre-training step when asked), timed while `count` such processes run."""
    import torch

    from scratchdet.engine.detection import Evaluation, build_detection, train_batches
    from scratchdet.engine.pretrain import _batches, build_pretraining, classification_counts
    from scratchdet.engine.trainer import Trainer

    device = torch.device(device_name)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = probe_config(root).model_copy(update={"seed": index})
    setup = build_detection(config, device, quiet=True)
    trainer = Trainer(
        setup.model, setup.optimizer, setup.schedule, train_batches(setup.dataset, config, 0), device=device
    )
    evaluation = Evaluation(config, device, quiet=True)
    for _ in range(WARMUP_STEPS):
        trainer.run_step()
    synchronize()
    _wait_for_all(ready_dir, count, f"{index}")
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    synchronize()
    result = {"step": (time.perf_counter() - started) / steps}
    started = time.perf_counter()
    evaluation(setup.model)
    result["eval100"] = time.perf_counter() - started
    if pretrain:
        pre = build_pretraining(config, device)
        pre_trainer = Trainer(pre.model, pre.optimizer, pre.schedule, _batches(pre, config, 0), device=device,
                              count_batch=classification_counts)  # fmt: skip
        for _ in range(WARMUP_STEPS):
            pre_trainer.run_step()
        synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            pre_trainer.run_step()
        synchronize()
        result["pretrain_step"] = (time.perf_counter() - started) / steps
    return result


def measure(
    root: Path, count: int, cores: int, device: str, steps: int, extra: dict[str, str]
) -> list[dict[str, float]]:
    """Run `count` worker processes at once, each on its share of the cores (and `extra` in their environment, as
    the study gives its jobs: the MPS server's); their results."""
    ready_dir = root / f"ready-{count}-{os.getpid()}"
    ready_dir.mkdir()
    environment = {**os.environ, **extra, "OMP_NUM_THREADS": str(max(1, cores // count))}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(index),
                "--count",
                str(count),
                "--ready",
                str(ready_dir),
                "--data",
                str(root),
                "--device",
                device,
                "--steps",
                str(steps),
                *(["--pretrain"] if count == 1 else []),
            ],
            stdout=subprocess.PIPE,
            env=environment,
            text=True,
        )
        for index in range(count)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a measuring process failed (exit {process.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def predict(train_images: int, jobs: int, speed: dict[str, float]) -> dict[str, float]:
    """Predicted seconds of the GPU demo along its longest chain, by part."""
    from scratchdet.data.synthetic import DEMO_GPU_SPEC

    one_x = EPOCHS_PER_1X * train_images / 16  # iterations of 1x at 16 images per iteration
    classification = 24 * DEMO_GPU_SPEC.classification_train_per_class
    parts = {
        "pre-training": 12 * classification / 128 * speed["pretrain_step"] * speed["slowdown"],
        "matched arm (6x + pre-training's pixels)": (LONGEST * one_x + PRETRAIN_AS_ITERATIONS) * speed["step"],
        # Periodic evaluations score 100 scenes, the final one all 500.
        "evaluations": ((LONGEST + PRETRAIN_AS_ITERATIONS / one_x) * EVALS_PER_1X + 5) * speed["eval100"],
        "fixed": FIXED_SECONDS,
    }
    if jobs < 8:  # too few slots to train the 1x, 3x and matched arms beside the 6x arms: they run after them
        parts["later arms"] = 1.5 * one_x * speed["step"]  # the 1x and 3x arms, forked
    parts["total"] = sum(parts.values())
    return parts


def choose(measured: dict[int, list[dict[str, float]]], budget: float) -> dict[str, Any]:
    alone = measured[1][0]
    options = []
    for jobs in [c for c in measured if c > 1] or [1]:
        step = max(r["step"] for r in measured[jobs])
        evals = max(r["eval100"] for r in measured[jobs])
        speed = {"step": step, "eval100": evals, "pretrain_step": alone["pretrain_step"],
                 "slowdown": step / alone["step"]}  # fmt: skip
        size = 100
        while predict(size + 100, jobs, speed)["total"] <= budget:
            size += 100
        options.append({"jobs": jobs, "train_images": size, "speed": speed, "predicted": predict(size, jobs, speed)})
    return max(options, key=lambda o: (o["train_images"], o["jobs"]))


def replacements(plan: dict[str, Any]) -> list[tuple[Path, str, str]]:
    """(file, pattern matching one line, its new text) for each number the plan sets."""
    period = math.ceil(EPOCHS_PER_1X * plan["train_images"] / 16 / EVALS_PER_1X)
    study = SOURCE / "configs" / "demo" / "study_gpu.yaml"
    return [
        (
            SOURCE / "data" / "synthetic.py",
            r"^DEMO_GPU_TRAIN_IMAGES = \d+$",
            f"DEMO_GPU_TRAIN_IMAGES = {plan['train_images']}",
        ),
        (SOURCE / "demo.py", r"^DEMO_GPU_JOBS = \d+", f"DEMO_GPU_JOBS = {plan['jobs']}"),
        (study, r"^  - eval\.period=\d+$", f"  - eval.period={period}"),
        (study, r"^  - output\.checkpoint_period=\d+$", f"  - output.checkpoint_period={period}"),
    ]


def apply(plan: dict[str, Any]) -> None:
    for path, pattern, replacement in replacements(plan):
        text, count = re.subn(pattern, replacement, path.read_text(), flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(f"{path}: expected one line matching {pattern!r}, found {count}")
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the demo (default: %(default)s)")
    parser.add_argument("--apply", action="store_true", help="write the chosen size into the demo's files")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "probe_gpu", help="small generated data")
    parser.add_argument("--out", type=Path, help="also write the measurements and the plan here (JSON)")
    parser.add_argument("--device", default="cuda", help="cpu: only to try this tool out (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process (default: %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=CONCURRENCY,
        help="processes at once to measure; 1 is always measured (default: %(default)s)",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pretrain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.concurrency = sorted({1, *args.concurrency})
    if args.worker is not None:
        print(
            json.dumps(worker(args.data, args.ready, args.count, args.worker, args.pretrain, args.device, args.steps))
        )
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this tool sizes the GPU demo on the GPU it will run on")
    started = time.perf_counter()
    probe_data(args.data)
    cores = os.cpu_count() or 1
    measured = {}
    # As the demo's study shares the GPU: its processes are clients of one MPS server (engine/mps.py).
    with mps_server() if args.device == "cuda" else nullcontext({}) as extra:
        print(f"CUDA MPS: {'not available: the processes time-share the GPU' if extra is None else 'in use'}")
        for count in args.concurrency:
            measured[count] = measure(args.data, count, cores, args.device, args.steps, extra or {})
            steps = ", ".join(f"{r['step']:.3f}" for r in measured[count])
            evals = ", ".join(f"{r['eval100']:.1f}" for r in measured[count])
            print(f"{count} process(es) at once: s/step {steps}; s per 100-scene evaluation {evals}", flush=True)
    print(f"pre-training: {measured[1][0]['pretrain_step']:.3f} s/step alone")
    plan = choose(measured, args.budget)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in plan["predicted"].items())
    print(f"plan: {plan['train_images']} training scenes, {plan['jobs']} arms at once; predicted {parts}")
    print(f"measuring took {time.perf_counter() - started:.0f} s")
    if args.out:
        device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
        record = {"device": device, "cores": cores, "budget": args.budget, "measured": measured, "plan": plan}
        args.out.write_text(json.dumps(record, indent=2))
    if args.apply:
        apply(plan)
        print("written: DEMO_GPU_TRAIN_IMAGES, DEMO_GPU_JOBS, and the periods of configs/demo/study_gpu.yaml")


if __name__ == "__main__":
    main()
