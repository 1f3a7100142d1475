"""Size the GPU demo (`scratchdet demo` on a CUDA machine) to a wall-time budget on this machine's GPU.

    python tools/gpu_demo_calibration.py                  # measure and print the plan (about a minute)
    python tools/gpu_demo_calibration.py --apply          # ... and write it into the demo's files
    python tools/gpu_demo_calibration.py --budget 420     # seconds from generating the data to the report

The GPU demo keeps the paper's design fixed (configs/demo/study_gpu.yaml: 1x = 12 epochs, arms up to 12x, the
cost-matched arm, two reduced training sets at 1/4 and 1/16 of the scenes, two or three seeds): its wall time then
grows with the number of training scenes, the one number this tool chooses, and with the seeds. It measures, on
small generated data, each process's start-up and training step of the demo's model with 1, 4 and 8 processes
sharing the GPU at once (they all start timing together), the evaluation of 100 scenes, the pre-training step and
the data generation; then it plans the study at each candidate size (the study's own planner: every arm, fork and
cost-matched length) and runs the local executor's schedule on it (`study.local.simulated_wall_seconds`: the same
start order, that many slots), and picks the largest training set, in hundreds, whose predicted wall time from no
data to the report fits the budget; a third seed when it fits at that same size. Nothing here looks at AP: the
size is chosen for time alone.

--apply writes the training-set size (`DEMO_GPU_TRAIN_IMAGES`, data/synthetic.py), the arms trained at once
(`DEMO_GPU_JOBS`, demo.py), and in configs/demo/study_gpu.yaml the evaluation periods (every half 1x during the
first 1x, then every 1x) and the checkpoint period (half a 1x), the reduced training sets and the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

from scratchdet.engine.mps import mps_server

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "scratchdet"
PRESET = "demo/mask_rcnn_gpu"
STUDY = SOURCE / "configs" / "demo" / "study_gpu.yaml"
EPOCHS_PER_1X = 12  # study_gpu.yaml: solver.base_epochs
IMAGES_PER_BATCH = 16  # configs/demo/mask_rcnn_gpu.yaml: solver.images_per_batch
EVALS_PER_1X = 2  # periodic evaluations per 1x of the full set (the period is half a 1x)
# The reduced training sets, as fractions of the full one: a factor 4 apart, as the paper's 35k and 10k sets are
# (3.5); the smaller at 1/16 holds a few batches of scenes, "very little" for this data. The paper's 1k set (1/118
# of COCO) would be 3 to 8 scenes here, fewer than a batch.
SUBSET_DIVISORS = (4, 16)
SMALLEST_SUBSET = IMAGES_PER_BATCH  # a reduced set holds at least one batch: the smallest training set is 16 x 16
CONCURRENCY = [1, 4, 8]
WARMUP_STEPS = 8
# Seconds the measurements do not cover: checking the data and planning the study (10), and the report: its
# resampling (the cores share it) at about 6 core-seconds per arm's final evaluation (500 resamples of 500 scenes,
# box and mask; on a 2-core AMD EPYC one task of the CPU demo's 300 scenes took 1.8 s) and 0.3 per periodic one
# (100 resamples of 100 scenes: 0.15 s a task), plus 20 for verdicts, figures and the gallery. Estimates: the
# budget should keep a margin.
CHECK_SECONDS = 10
REPORT_SECONDS = 20
REPORT_CORE_SECONDS_PER_FINAL = 6.0
REPORT_CORE_SECONDS_PER_PERIODIC = 0.3


def probe_data(root: Path) -> float:
    """Generate the small data the measurements train on; returns the seconds it took per scene-equivalent
    (`scene_equivalents`)."""
    from scratchdet.data.synthetic import generate

    spec = probe_spec()
    started = time.perf_counter()
    generate(root, spec, quiet=True)
    return (time.perf_counter() - started) / scene_equivalents(spec)


def probe_spec() -> Any:
    from scratchdet.data.synthetic import SynthSpec

    return SynthSpec(train_images=160, val_images=100, classification_train_per_class=16,
                     classification_val_per_class=4)  # fmt: skip


def scene_equivalents(spec: Any) -> float:
    """Images of a generated set, a classification image (half a scene's side) counted as a quarter scene."""
    classification = 24 * (spec.classification_train_per_class + spec.classification_val_per_class)
    return (
        spec.train_images + spec.val_images + classification * (spec.classification_image_size / spec.image_size) ** 2
    )


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
    root: Path, ready_dir: Path, count: int, index: int, pretrain: bool, device_name: str, steps: int, launched: float
) -> dict[str, float]:
    """One process of a measurement: its start-up (from its launch, `launched`, to its model and data ready on the
    device), seconds per detection training step (and per evaluation of 100 scenes, and per pre-training step when
    asked), timed while `count` such processes run."""
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
    trainer.run_step()
    synchronize()
    startup = time.time() - launched  # as a study's process: imports, CUDA, model, data, the first step
    for _ in range(WARMUP_STEPS):
        trainer.run_step()
    synchronize()
    _wait_for_all(ready_dir, count, f"{index}")
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    synchronize()
    result = {"startup": startup, "step": (time.perf_counter() - started) / steps}
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
                "--launched",
                str(time.time()),
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


def demo_plan(train_images: int, seeds: int, root: Path, folder: Path) -> Any:
    """The GPU demo study as `scratchdet demo` would plan it with `train_images` scenes and `seeds` seeds (the axes
    as `replacements` writes them), on the data in `root` (the probe data: the same scene sizes, on which the
    cost-matched length depends); its spec written in `folder`. Use it inside `demo_pretraining_size`."""
    import yaml

    from scratchdet.study.spec import expand, read_spec

    data = yaml.safe_load(STUDY.read_text())
    data["axes"]["train_subset"] = [None, *subsets(train_images)]
    data["axes"]["seed"] = list(range(seeds))
    period, later = eval_period(train_images), one_x(train_images)
    data["overrides"] += [f"eval.period={period}", f"eval.period_from={{{later}: {later}}}",
                          f"data.root={root}", f"pretrain.root={root / 'classification'}"]  # fmt: skip
    (folder / "study.yaml").write_text(yaml.safe_dump(data))
    return expand(read_spec(folder / "study.yaml"), folder / "study", train_images)


@contextmanager
def demo_pretraining_size() -> Iterator[None]:
    """Pre-training's length as on the demo's classification set (24 classes x its images per class), not on the
    probe's: the planner counts the images in the folder."""
    from scratchdet.data.synthetic import DEMO_GPU_SPEC
    from scratchdet.engine import pretrain
    from scratchdet.study import spec as study_spec

    images = 24 * DEMO_GPU_SPEC.classification_train_per_class

    def iterations(config: Any) -> int:
        return pretrain._schedule(config, images).total_iterations

    with patch.object(study_spec, "classification_iterations", iterations):
        yield


def subsets(train_images: int) -> list[int]:
    return [train_images // divisor for divisor in SUBSET_DIVISORS]


def eval_period(train_images: int) -> int:
    """Periodic evaluations during the first 1x of the whole set: every half 1x (finding 2's early point lies
    between a third of the way through 1x and its first lr step, at two thirds)."""
    return math.ceil(one_x(train_images) / EVALS_PER_1X)


def one_x(train_images: int) -> int:
    """Iterations of 1x on the whole set; after them the periodic evaluations come every 1x (enough for the
    curves; the verdicts compare final evaluations)."""
    return math.ceil(EPOCHS_PER_1X * train_images / IMAGES_PER_BATCH)


def predict(train_images: int, seeds: int, jobs: int, speed: dict[str, float], root: Path) -> dict[str, float]:
    """Predicted seconds of the GPU demo from no data to the report, by part: the study is every run's start-up,
    steps and evaluations, scheduled as the local executor schedules them on `jobs` slots."""
    from scratchdet.data.synthetic import DEMO_GPU_SPEC
    from scratchdet.engine.hooks import evaluation_due
    from scratchdet.study.jobs import job_graph, runs_of
    from scratchdet.study.local import simulated_wall_seconds

    with demo_pretraining_size(), tempfile.TemporaryDirectory() as folder:
        plan = demo_plan(train_images, seeds, root, Path(folder))
        graph = job_graph(plan, Path(folder) / "study")
        runs = runs_of(graph)
    final = DEMO_GPU_SPEC.val_images / 100 * speed["eval100"]
    seconds, periodic = {}, 0
    for run, parts in runs.items():
        start, end = parts[0].start, parts[-1].iterations
        if parts[0].command == "pretrain":
            seconds[run] = end * speed["pretrain_step"] * speed["slowdown"]
            continue
        settings = parts[0].config.eval
        evaluations = sum(1 for i in range(start + 1, end) if evaluation_due(i, settings.period, settings.period_from))
        periodic += evaluations
        seconds[run] = (end - start) * speed["step"] + evaluations * speed["eval100"] + final
    resampling = len(plan.arms) * REPORT_CORE_SECONDS_PER_FINAL + periodic * REPORT_CORE_SECONDS_PER_PERIODIC
    parts = {
        "data": speed["generate_per_scene"] * scene_equivalents(replace(DEMO_GPU_SPEC, train_images=train_images)),
        "check and plan": CHECK_SECONDS,
        "study": simulated_wall_seconds(graph, jobs, seconds, startup=speed["startup"]),
        "report": REPORT_SECONDS + resampling / speed["cores"],
    }
    parts["total"] = sum(parts.values())
    return parts


def choose(
    measured: dict[int, list[dict[str, float]]], budget: float, machine: dict[str, float], root: Path
) -> dict[str, Any]:
    """The largest training set, in hundreds, whose prediction fits `budget` with two seeds, over the numbers of
    slots measured; three seeds when they fit at that size too. Nothing fitting: the smallest size (every reduced
    set at least a batch), marked `fits: False`. `machine`: the data generation speed and the cores."""
    alone = measured[1][0]
    smallest = math.ceil(SMALLEST_SUBSET * max(SUBSET_DIVISORS) / 100) * 100
    options = []
    for jobs in [c for c in measured if c > 1] or [1]:
        step = max(r["step"] for r in measured[jobs])
        speed = {"step": step, "eval100": max(r["eval100"] for r in measured[jobs]),
                 "startup": max(r["startup"] for r in measured[jobs]), "pretrain_step": alone["pretrain_step"],
                 "slowdown": step / alone["step"], **machine}  # fmt: skip
        for seeds in (2, 3):
            size = smallest
            fits = predict(size, seeds, jobs, speed, root)["total"] <= budget
            while fits and predict(size + 100, seeds, jobs, speed, root)["total"] <= budget:
                size += 100
            options.append({"jobs": jobs, "seeds": seeds, "train_images": size, "fits": fits, "speed": speed})
    two = max((o for o in options if o["seeds"] == 2), key=lambda o: (o["fits"], o["train_images"], o["jobs"]))
    three = [o for o in options if o["seeds"] == 3 and o["fits"] and o["train_images"] >= two["train_images"]]
    plan = dict(max(three, key=lambda o: o["jobs"]) if three and two["fits"] else two)
    plan["subsets"] = subsets(plan["train_images"])
    plan["predicted"] = predict(plan["train_images"], plan["seeds"], plan["jobs"], plan["speed"], root)
    return plan


def replacements(plan: dict[str, Any]) -> list[tuple[Path, str, str]]:
    """(file, pattern matching one line, its new text) for each number the plan sets."""
    period, later = eval_period(plan["train_images"]), one_x(plan["train_images"])
    reduced = ", ".join(str(s) for s in plan["subsets"])
    return [
        (
            SOURCE / "data" / "synthetic.py",
            r"^DEMO_GPU_TRAIN_IMAGES = \d+$",
            f"DEMO_GPU_TRAIN_IMAGES = {plan['train_images']}",
        ),
        (SOURCE / "demo.py", r"^DEMO_GPU_JOBS = \d+", f"DEMO_GPU_JOBS = {plan['jobs']}"),
        (STUDY, r"^  - eval\.period=\d+$", f"  - eval.period={period}"),
        (STUDY, r'^  - "eval\.period_from=\{\d+: \d+\}"$', f'  - "eval.period_from={{{later}: {later}}}"'),
        (STUDY, r"^  - output\.checkpoint_period=\d+$", f"  - output.checkpoint_period={period}"),
        (STUDY, r"^  train_subset: \[null(, \d+)+\]$", f"  train_subset: [null, {reduced}]"),
        (STUDY, r"^  seed: \[\d+(, \d+)*\]$", f"  seed: [{', '.join(str(s) for s in range(plan['seeds']))}]"),
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
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.concurrency = sorted({1, *args.concurrency})
    if args.worker is not None:
        result = worker(args.data, args.ready, args.count, args.worker, args.pretrain, args.device, args.steps,
                        args.launched)  # fmt: skip
        print(json.dumps(result))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this tool sizes the GPU demo on the GPU it will run on")
    started = time.perf_counter()
    from scratchdet.data.synthetic import existing_spec

    if existing_spec(args.data) == probe_spec():
        shutil.rmtree(args.data)  # generated afresh: its time is measured
    elif args.data.exists() and any(args.data.iterdir()):
        raise SystemExit(f"--data {args.data}: holds something else than this tool's probe data; give a new folder")
    cores = os.cpu_count() or 1
    machine = {"generate_per_scene": probe_data(args.data), "cores": cores}
    print(f"data generation: {machine['generate_per_scene'] * 1000:.1f} ms per scene", flush=True)
    measured = {}
    # As the demo's study shares the GPU: its processes are clients of one MPS server (engine/mps.py).
    with mps_server() if args.device == "cuda" else nullcontext({}) as extra:
        if args.device == "cuda":
            print(f"CUDA MPS: {'not available: the processes time-share the GPU' if extra is None else 'in use'}")
        for count in args.concurrency:
            measured[count] = measure(args.data, count, cores, args.device, args.steps, extra or {})
            columns = (("start-up s", "startup"), ("s/step", "step"), ("s per 100-scene evaluation", "eval100"))
            values = [f"{what} " + ", ".join(f"{r[key]:.3f}" for r in measured[count]) for what, key in columns]
            print(f"{count} process(es) at once: " + "; ".join(values), flush=True)
    print(f"pre-training: {measured[1][0]['pretrain_step']:.3f} s/step alone")
    plan = choose(measured, args.budget, machine, args.data)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in plan["predicted"].items())
    print(
        f"plan: {plan['train_images']} training scenes (reduced sets {plan['subsets']}), {plan['seeds']} seeds, "
        f"{plan['jobs']} arms at once; predicted {parts}"
    )
    if not plan["fits"]:
        print(f"NOT WITHIN THE BUDGET of {args.budget:.0f} s even at the smallest size: the demo will run longer")
    print(f"measuring took {time.perf_counter() - started:.0f} s")
    if args.out:
        device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
        record = {"device": device, "cores": cores, "budget": args.budget, "measured": measured, "plan": plan}
        args.out.write_text(json.dumps(record, indent=2))
    if args.apply:
        apply(plan)
        print("written: DEMO_GPU_TRAIN_IMAGES, DEMO_GPU_JOBS, and the periods, reduced sets and seeds of "
              "configs/demo/study_gpu.yaml")  # fmt: skip


if __name__ == "__main__":
    main()
