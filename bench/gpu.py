"""GPU training throughput of the paper's model: R50-FPN GN Mask R-CNN at 800 px, scratchdet's training step next to
torchvision's reference loop, over per-GPU batch, bf16 autocast and channels-last.

    python bench/gpu.py                       # the full grid, about 5 minutes on one H100
    python bench/gpu.py --batches 2 --steps 5  # a quick look

Both loops train the same model object on the same batch, already on the GPU (this measures the step, not the data
pipeline: see bench/loader.py for that), alternating in `--rounds` rounds; the throughput of each is the median
over rounds. Peak memory is the most the step allocated; host waits are the synchronising CUDA calls of one step
(`torch.cuda.set_sync_debug_mode`), ops the ATen operations it dispatched. A configuration that runs out of
memory is reported as such, and configurations still waiting when `--budget` seconds have passed are skipped
(and listed).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import torch

import common
from scratchdet.assemble import detector_from_config
from scratchdet.config import load_config
from scratchdet.engine.schedule import build_optimizer, build_schedule, parameter_groups
from scratchdet.engine.trainer import Trainer

PRESET = "paper/mask_rcnn_R50_FPN_gn_scratch_6x"


def synthetic_batch(batch: int, size: int, classes: int, device: torch.device) -> tuple[list, list]:
    """`batch` 8-bit images of size × 4/3·size (as the data pipeline ships them; the detector normalises) with 12
    rectangular objects each (boxes, labels, masks)."""
    generator = torch.Generator().manual_seed(batch)
    height, width = size, size * 4 // 3
    images, targets = [], []
    for index in range(batch):
        images.append(torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).to(device))
        corner = torch.rand(12, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        extent = 16 + torch.rand(12, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([corner, corner + extent], dim=1).round()
        masks = torch.zeros(12, height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
            mask[y0:y1, x0:x1] = 1
        targets.append({
            "boxes": boxes.to(device), "labels": torch.randint(1, classes + 1, (12,), generator=generator).to(device),
            "masks": masks.to(device), "sample_seed": 1000 * batch + index,
        })  # fmt: skip
    return images, targets


def measure(config: Any, batch: int, bf16: bool, channels_last: bool, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, _ = detector_from_config(config, 80)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).train()
    optimizer = build_optimizer(parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0,
                                                 weight_decay_bias=0.0), momentum=0.9)  # fmt: skip
    images, targets = synthetic_batch(batch, args.size, 80, device)
    schedule = build_schedule(multiplier=1.0, images_per_batch=batch, base_lr=0.002, warmup_iters=0,
                              warmup_factor=1.0)  # fmt: skip
    trainer = Trainer(model, optimizer, schedule, itertools.repeat((images, targets)), device=device,
                      precision="bf16" if bf16 else "fp32")  # fmt: skip
    loops = {
        "ours": trainer.run_step,
        "reference": lambda: common.reference_step(model, optimizer, images, targets, device, bf16),
    }
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    peak: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name in sorted(loops, reverse=round_ % 2 == 1):  # ours first, then the reference first, ...
            step = loops[name]
            common.reset_peak_memory(device)
            seconds[name].append(common.timed(step, args.steps, args.warmup, device))
            peak[name] = max(peak.get(name, 0.0), common.peak_memory_gib(device))
    waits = {name: common.waits_and_ops(step, device) for name, step in loops.items()}  # one untimed step each
    ours, reference = (batch / common.median(seconds[name]) for name in ("ours", "reference"))
    return {"ours_images_per_s": ours, "reference_images_per_s": reference, "ratio": ours / reference,
            "ours_peak_gib": peak["ours"], "reference_peak_gib": peak["reference"],
            "ours_s_per_it": common.median(seconds["ours"]),
            "reference_s_per_it": common.median(seconds["reference"]),
            "ours_host_waits": waits["ours"][0], "reference_host_waits": waits["reference"][0],
            "ours_ops": waits["ours"][1], "reference_ops": waits["reference"][1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=PRESET, help="model preset (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for the model")
    parser.add_argument("--size", type=int, default=800, help="shorter image side (longer: 4/3 of it)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8], help="per-GPU batch sizes")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timing")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two loops")
    parser.add_argument("--budget", type=float, default=480, help="skip what is left after this many seconds")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune per input shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "gpu.json")
    args = parser.parse_args()
    # Off, as in detectron2: the RoI heads see a different number of RoIs at every step, and cuDNN would
    # autotune (slowly, with large workspaces) for each new shape.
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    sizes = [f"data.test_size={args.size}", f"data.max_size={args.size * 2}"]
    config = load_config(args.preset, [*sizes, *args.overrides])
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for batch, bf16, channels_last in itertools.product(args.batches, (False, True), (False, True)):
        row: dict[str, Any] = {"batch": batch, "bf16": bf16, "channels_last": channels_last}
        if time.perf_counter() - started > args.budget:
            row["status"] = "skipped (time budget)"
        else:
            try:
                row.update(measure(config, batch, bf16, channels_last, args), status="ok")
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        rows.append(row)
        print(common.table([row], COLUMNS).splitlines()[-1], flush=True)
    print(f"\n{config.model.backbone}-FPN {config.model.norm} Mask R-CNN, {args.size} px, on "
          f"{common.machine()['device']}; {time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print(common.table(rows, COLUMNS))
    common.write_json(args.out, "gpu", rows, preset=args.preset, size=args.size, steps=args.steps,
                      rounds=args.rounds)  # fmt: skip


COLUMNS = ["batch", "bf16", "channels_last", "ours_images_per_s", "reference_images_per_s", "ratio", "ours_peak_gib",
           "reference_peak_gib", "ours_host_waits", "reference_host_waits", "ours_ops", "status"]  # fmt: skip

if __name__ == "__main__":
    main()
