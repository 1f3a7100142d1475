"""Operations one training step dispatches, and those that would make the host wait on a GPU, by batch size.

    python bench/step_ops.py                                # the GPU demo's model at 8, 16 and 32 images
    python bench/step_ops.py --preset demo/mask_rcnn --images 2 8

On a GPU each operation costs the host a few microseconds whatever its size, so a step whose operations grow with
the number of images is bound by the host at large batches. The counts are structural (the same on every CPU):
one step of the preset on generated data (data/bench, the batches loaded beforehand), counted by
`scratchdet.engine.op_count`, with RoIs pooled by torchvision's RoIAlign kernels as on a GPU. On the CPU, NMS runs
once an image and FPN level (4 operations each); a GPU runs it for several images at once.
"""

from __future__ import annotations

import argparse

import torch

from scratchdet.config import load_config
from scratchdet.engine.detection import build_detection, train_batches
from scratchdet.engine.op_count import count_ops
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import seed_everything
from scratchdet.modeling.roi_align import SeparableMultiScaleRoIAlign
from train_step import DATA, ensure_data


def step_counts(preset: str, images: int) -> tuple[int, int]:
    """(operations, host waits) of a training step of `preset` at `images` a batch, after one on the same batch."""
    config = load_config(preset, [f"data.root={DATA}", "data.num_workers=0", f"solver.images_per_batch={images}"])
    seed_everything(0)
    setup = build_detection(config, torch.device("cpu"), quiet=True)
    for module in setup.model.modules():
        if isinstance(module, SeparableMultiScaleRoIAlign):
            module.separable = False  # torchvision's kernels, as on a GPU
    first = next(train_batches(setup.dataset, config, 0))
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, iter([first, first]))
    trainer.run_step()  # the first step also sets up what later steps of these sizes reuse (scales, anchors)
    counts = count_ops(trainer.run_step)
    return counts.total, counts.host_waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo/mask_rcnn_gpu", help="(default: %(default)s)")
    parser.add_argument("--images", type=int, nargs="+", default=[8, 16, 32], help="(default: %(default)s)")
    args = parser.parse_args()
    ensure_data()
    print("| images per step | operations | host waits |\n|---|---|---|")
    for images in args.images:
        operations, waits = step_counts(args.preset, images)
        print(f"| {images} | {operations} | {waits} |", flush=True)


if __name__ == "__main__":
    main()
