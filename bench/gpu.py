"""GPU training throughput: scratchdet's training loop against torchvision's reference loop, on the GPU demo's model
(GN Mask R-CNN, ResNet-18 widths, 128 px) at 16, 32 and 64 images and on R50-FPN GN Mask R-CNN at 800 px at 2 and 8
images, in fp32 and bf16.

    python bench/gpu.py                               # the whole grid (about 10 minutes on one H100)
    python bench/gpu.py --models demo --batches 16    # one configuration
    python bench/gpu.py --device cpu --models demo --batches 2 --rounds 1 --steps 2   # a smoke test, no GPU

As bench/train_step.py, with its loops: each configuration trains two copies of one model (same seed) on the same
generated images in the same order, each with its own data pipeline: ours is scratchdet's loader and Trainer as
`scratchdet train` runs them, the reference a plain DataLoader and torchvision's reference step with torchvision's
own RPN and RoI heads. They alternate in `--rounds` rounds of `--steps` steps; images/s and the ratio are medians
over rounds. Then, untimed: the peak memory of one step, the host syncs of one step (every synchronising CUDA call,
counted by `torch.cuda.set_sync_debug_mode`; on a CPU, the operations that would sync, scratchdet.engine.op_count),
and the CUDA kernels a step launched and the seconds they ran (torch.profiler over `--profile-steps` steps), which
over the timed step's seconds is the GPU's busy share. The data-wait share is the part of the timed wall time a
loop waited for its next batch. Configurations still waiting after `--budget` seconds are skipped and listed; one
that runs out of memory says so.
TF32: PyTorch runs convolutions in TF32 by default (torch.backends.cudnn.allow_tf32), matrix products in fp32;
`--tf32-matmul` lets the box head's fully connected layers use TF32 too. `--compile MODE` adds a third loop, ours
with the backbone and FPN compiled (solver.compile): the first step of each new input size compiles, which
`--compile-warmup` untimed steps absorb for the sizes they meet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import common
from scratchdet.data.synthetic import SynthSpec, generate
from train_step import Loop, alternate, ours, reference, summary

DATA = common.REPO / "data" / "bench_gpu"
# The generated scenes are 128 px; R50 resizes them to 800 as the paper's recipe resizes COCO (data.min_size).
MODELS: dict[str, tuple[str, list[str], list[int]]] = {
    "demo": ("demo/mask_rcnn_gpu", [], [16, 32, 64]),
    "r50": ("paper/mask_rcnn_R50_FPN_gn_scratch_6x",
            ["data.train_annotations=annotations/instances_train.json", "data.train_images=train",
             "data.val_annotations=annotations/instances_val.json", "data.val_images=val"], [2, 8]),
}  # fmt: skip
COLUMNS = ["model", "batch", "precision", "loop", "images_per_s", "vs_reference", "s_per_it", "data_wait_share",
           "host_syncs", "kernels", "gpu_busy", "peak_gib", "status"]  # fmt: skip


def ensure_data(workers: int) -> None:
    if not (DATA / "annotations" / "instances_train.json").is_file():
        spec = SynthSpec(train_images=640, val_images=8, classification_train_per_class=1,
                         classification_val_per_class=1)  # fmt: skip
        generate(DATA, spec, workers=workers, quiet=True)


def measure(model: str, batch: int, precision: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    preset, extra, _ = MODELS[model]
    overrides = [f"data.root={DATA}", *extra, f"solver.images_per_batch={batch}", f"solver.precision={precision}"]
    batches_needed = args.warmup + args.rounds * args.steps + 2 + args.profile_steps  # timed, counted, profiled
    loops = [Loop("reference", *reference(preset, overrides, batches_needed, device), device),
             Loop("ours", *ours(preset, overrides, device), device)]  # fmt: skip
    if args.compile:
        compiled = [*overrides, f"solver.compile={args.compile}"]
        loops.append(Loop(f"ours, compiled ({args.compile})", *ours(preset, compiled, device), device))
        for _ in range(args.compile_warmup):  # each new input size compiles first: not what the rounds time
            loops[-1].step()
    alternate(loops, args.rounds, args.steps, args.warmup)
    rows = []
    for loop in loops:
        common.reset_peak_memory(device)
        loop.step()
        peak = common.peak_memory_gib(device)
        syncs, _ = common.waits_and_ops(loop.step, device)
        kernels, gpu_seconds = common.kernel_profile(loop.step, device, args.profile_steps)
        row = summary(loop, loops[0])
        rows.append({"model": model, "batch": batch, "precision": precision, **row, "host_syncs": syncs,
                     "kernels": kernels, "gpu_busy": gpu_seconds / row["s_per_it"], "peak_gib": peak,
                     "status": "ok"})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["demo", "r50"])
    parser.add_argument("--batches", type=int, nargs="+", help="images per step (default: 16 32 64 demo, 2 8 r50)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop and round (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two loops (default: 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the first round")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps profiled for kernels and busy share")
    parser.add_argument("--budget", type=float, default=540, help="skip what is left after this many seconds")
    parser.add_argument("--tf32-matmul", action="store_true", help="TF32 matrix products (convolutions: always)")
    parser.add_argument(
        "--compile",
        choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
        help="also time ours with the backbone and FPN compiled in this mode (solver.compile)",
    )
    parser.add_argument("--compile-warmup", type=int, default=12, help="untimed steps of the compiled loop first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=8, help="processes generating the data on first use")
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "gpu.json")
    args = parser.parse_args()
    # Off, as in detectron2: the RoI heads see other shapes at every step, and cuDNN would autotune for each.
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = args.tf32_matmul
    ensure_data(args.workers)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    grid = [(m, b, p) for m in args.models for b in (args.batches or MODELS[m][2]) for p in args.precisions]
    for model, batch, precision in grid:
        if time.perf_counter() - started > args.budget:
            rows.append({"model": model, "batch": batch, "precision": precision, "status": "skipped (time budget)"})
            continue
        try:
            found = measure(model, batch, precision, args)
        except torch.OutOfMemoryError:
            found = [{"model": model, "batch": batch, "precision": precision, "status": "out of memory"}]
        rows += found
        for row in found:
            print(common.table([row], COLUMNS).splitlines()[-1], flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"\n{common.machine()['device']}, torch {torch.__version__}; {time.perf_counter() - started:.0f} s\n")
    print(common.table(rows, COLUMNS))
    common.write_json(args.out, "gpu", rows, steps=args.steps, rounds=args.rounds, tf32_matmul=args.tf32_matmul)


if __name__ == "__main__":
    main()
