"""CPU training throughput: scratchdet's training loop against torchvision's reference loop, same model and data.

    python bench/train_step.py                 # the demo model and R50-FPN GN at 256 px, about 6 minutes on 2 cores
    python bench/train_step.py --models demo   # one of them

For each model, three loops train copies of the same model (same seed) on the same dataset and batch size,
alternating in rounds so that the machine's speed cancels in the ratios:
  reference      `for images, targets in loader: loss = sum(model(images, targets).values()); ...` with a plain
                 DataLoader (torchvision's references/detection/engine.py, minus logging) drawing the same images
                 in the same order as ours (a step's cost depends on its images), on the same model built from
                 torchvision's stock parts (its RoIAlign kernels, RPN and RoI heads);
  ours           scratchdet's Trainer with its seeded batch stream, as `scratchdet train` runs it;
  ours (before)  the same with the CPU RoIAlign switched off (model.threaded_roi_align=false: torchvision's
                 RoIAlign kernels), so against the reference it measures our loop and batched heads alone.
Reported: iterations/s, images/s, ours / reference, the share of step time spent waiting for data, the peak
resident memory of the process, and from one more (untimed) step: the operations that step dispatched and those
that would make the host wait on a GPU (scratchdet.engine.op_count). Generated data is made under data/bench/ on
first use.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import torch

import common
from scratchdet.config import load_config
from scratchdet.data.batching import TrainingBatches, collate
from scratchdet.data.synthetic import SynthSpec, generate
from scratchdet.engine.detection import build_detection, train_batches
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import seed_everything

DATA = common.REPO / "data" / "bench"
MODELS = {
    "demo": ("demo/mask_rcnn", []),
    "r50_256px": ("paper/mask_rcnn_R50_FPN_gn_scratch_6x",
                  ["data.train_annotations=annotations/instances_train.json", "data.train_images=train",
                   "data.val_annotations=annotations/instances_val.json", "data.val_images=val",
                   "data.min_size=[256]", "data.max_size=342", "solver.images_per_batch=2", "data.num_workers=1",
                   "model.anchor_sizes=[16,32,64,128,256]", "model.roi_canonical_scale=64",
                   "model.roi_batch_size_per_image=128", "model.rpn_pre_nms_top_n_train=1000",
                   "model.rpn_post_nms_top_n_train=500"]),
}  # fmt: skip
VARIANTS = {"ours": [], "ours (before)": ["model.threaded_roi_align=false"]}
# The reference model: torchvision's own RoIAlign, run eagerly.
STOCK_TORCHVISION = ["model.threaded_roi_align=false", "solver.compile=eager"]


def ensure_data() -> None:
    if not (DATA / "annotations" / "instances_train.json").is_file():
        generate(DATA, SynthSpec(train_images=400, val_images=8, classification_train_per_class=1,
                                 classification_val_per_class=1), workers=2, quiet=True)  # fmt: skip


class Loop:
    """One training loop; `step()` runs one iteration and returns the seconds it waited for its batch."""

    def __init__(self, name: str, step: Callable[[], float], images_per_batch: int, device: torch.device) -> None:
        self.name, self.step, self.images_per_batch, self.device = name, step, images_per_batch, device
        self.rounds: list[tuple[float, float]] = []  # (seconds per iteration, data share)

    def run(self, steps: int, warmup: int) -> None:
        """Time `steps` steps after `warmup` untimed ones, from the first start to the device's last finish."""
        for _ in range(warmup):
            self.step()
        common.synchronize(self.device)
        started = time.perf_counter()
        waited = sum(self.step() for _ in range(steps))
        common.synchronize(self.device)
        total = time.perf_counter() - started
        self.rounds.append((total / steps, waited / total))


def ours(preset: str, overrides: list[str], device: torch.device) -> tuple[Callable[[], float], int]:
    config = load_config(preset, overrides)
    seed_everything(0)
    setup = build_detection(config, device, quiet=True)
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, train_batches(setup.dataset, config, 0),
                      device=device, precision=config.solver.precision)  # fmt: skip

    def step() -> float:
        trainer.run_step()
        return trainer.last_data_seconds

    return step, config.solver.images_per_batch


def reference(
    preset: str, overrides: list[str], batches_needed: int, device: torch.device
) -> tuple[Callable[[], float], int]:
    config = load_config(preset, overrides + STOCK_TORCHVISION)
    seed_everything(0)
    setup = build_detection(config, device, quiet=True)
    # The images of our batch stream, in its order: a step's cost follows what is in its images (objects, hence
    # positive RoIs and mask-head work), so both loops must see the same ones for a few steps to compare loops.
    groups = setup.dataset.aspect_groups() if config.data.group_by_aspect_ratio else None
    order = TrainingBatches(len(setup.dataset), config.solver.images_per_batch, config.seed, groups)
    loader = torch.utils.data.DataLoader(
        setup.dataset, batch_sampler=list(itertools.islice(order.global_batches(), batches_needed)),
        num_workers=config.data.num_workers, collate_fn=collate, persistent_workers=config.data.num_workers > 0,
    )  # fmt: skip
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    iteration = itertools.count()

    bf16 = config.solver.precision == "bf16"

    def step() -> float:
        started = time.perf_counter()
        images, targets = next(batches)
        waited = time.perf_counter() - started
        # The same warm-up as ours (torchvision's reference steps a warm-up scheduler each iteration): a model
        # that learns at the same pace proposes as many positive RoIs, which is what the heads' cost follows.
        for group in setup.optimizer.param_groups:
            group["lr"] = setup.schedule.lr_at(next(iteration))
        common.reference_step(setup.model, setup.optimizer, images, targets, device, bf16)
        return waited

    return step, config.solver.images_per_batch


def measure(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    preset, overrides = MODELS[model]
    overrides = [f"data.root={DATA}", *overrides]
    steps = args.steps if model == "demo" else max(2, args.steps // 2)  # the R50 step takes ~4 s here
    cpu = torch.device("cpu")
    loops = [Loop("reference", *reference(preset, overrides, args.warmup + args.rounds * steps, cpu), cpu)]
    loops += [Loop(name, *ours(preset, overrides + extra, cpu), cpu) for name, extra in VARIANTS.items()]
    alternate(loops, args.rounds, steps, args.warmup)
    counted = {loop.name: common.waits_and_ops(loop.step, cpu) for loop in loops}
    return [{"model": model, **summary(loop, loops[0]), "peak_rss_gib": common.peak_memory_gib(cpu),
             "host_waits": counted[loop.name][0], "ops": counted[loop.name][1]} for loop in loops]  # fmt: skip


def alternate(loops: list[Loop], rounds: int, steps: int, warmup: int) -> None:
    """`rounds` rounds of `steps` timed steps of every loop, rotating which goes first (`warmup` steps first)."""
    for round_ in range(rounds):
        for loop in loops[round_ % len(loops) :] + loops[: round_ % len(loops)]:
            loop.run(steps, warmup if round_ == 0 else 0)


def summary(loop: Loop, baseline: Loop) -> dict[str, Any]:
    """The medians over rounds of `loop`'s speed, its speed against `baseline`'s, and its data-wait share."""
    seconds = common.median([s for s, _ in loop.rounds])
    base = common.median([s for s, _ in baseline.rounds])
    return {"loop": loop.name, "s_per_it": seconds, "it_per_s": 1 / seconds,
            "images_per_s": loop.images_per_batch / seconds, "vs_reference": base / seconds,
            "data_wait_share": common.median([d for _, d in loop.rounds])}  # fmt: skip


COLUMNS = ["model", "loop", "s_per_it", "images_per_s", "vs_reference", "data_wait_share", "peak_rss_gib",
           "host_waits", "ops"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(common.REPO / "runs" / "bench" / "train_step.json"))
    args = parser.parse_args()
    ensure_data()
    rows = []
    for model in args.models:
        rows += measure(model, args)
        print(common.table(rows, COLUMNS), flush=True)
    print(f"\n{common.machine()['platform']}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    common.write_json(common.Path(args.out), "train_step", rows, steps=args.steps, rounds=args.rounds)


if __name__ == "__main__":
    main()
