"""Detectron schedules as pure functions of the iteration, and the SGD optimizer with its weight-decay groups.

The N× convention (the paper's, after Detectron). One "1x" unit U is 90,000 iterations at 16 images per iteration
(about 12 COCO epochs), or `base_epochs` passes over the training set when that is given. An Nx schedule lasts
L = N·U iterations. The learning rate is divided by 10 twice:

* N ≤ 2: at 2/3·L and 8/9·L (Detectron's 1x: 60k and 80k of 90k);
* N > 2: in the last 2/3·U and the last 2/9·U — the paper's "last 60k and last 20k iterations, whatever the
  length" (3x: 210k, 250k of 270k; 6x: 480k, 520k of 540k).

Both rules give the same steps at N = 2 (120k, 160k of 180k). With B images per iteration instead of 16 the linear
scaling rule applies: every iteration count × 16/B, the learning rate × B/16 (9x at 64 images: 202,500 iterations,
steps at 187,500 and 197,500, lr 0.08). In epoch mode U = base_epochs · dataset_size / B: the batch is already in it.
Warm-up multiplies the rate by a factor rising linearly from `warmup_factor` to 1 over `warmup_iters`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.norm import NORM_TYPES

REFERENCE_IMAGES_PER_BATCH = 16
COCO_1X_ITERATIONS = 90_000
LR_DECAY = 0.1


@dataclass(frozen=True)
class Schedule:
    total_iterations: int
    steps: tuple[int, ...]
    base_lr: float  # after the linear scaling rule
    warmup_iters: int
    warmup_factor: float
    images_per_batch: int
    decay: str = "step"  # "step": x0.1 at each step; "cosine": half a cosine from base_lr to 0 over the run

    def __post_init__(self) -> None:
        if self.total_iterations <= 0:
            raise ScratchdetError(
                f"the schedule has {self.total_iterations} iterations; lengthen solver.schedule or "
                "solver.base_epochs, or use a smaller solver.images_per_batch"
            )
        previous = 0
        for step in self.steps:
            if not previous < step < self.total_iterations:
                raise ScratchdetError(
                    f"lr step at iteration {step} is not inside the run (1..{self.total_iterations - 1}, increasing); "
                    "the schedule is too short for its steps: lengthen solver.schedule"
                )
            previous = step

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the update of `iteration` (0-based)."""
        if self.decay == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * iteration / self.total_iterations))
        else:
            decay = LR_DECAY ** sum(iteration >= step for step in self.steps)
        if iteration < self.warmup_iters:
            progress = iteration / self.warmup_iters
            decay *= self.warmup_factor * (1 - progress) + progress
        return self.base_lr * decay

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def one_x_iterations(images_per_batch: int, base_epochs: float | None, dataset_size: int | None) -> float:
    """Length of a 1x schedule in iterations (may be fractional before the Nx multiplication)."""
    if base_epochs is None:
        return COCO_1X_ITERATIONS * REFERENCE_IMAGES_PER_BATCH / images_per_batch
    if not dataset_size:
        raise ScratchdetError("solver.base_epochs needs the training-set size; the dataset could not be read")
    return base_epochs * dataset_size / images_per_batch


def build_schedule(
    *,
    multiplier: float,
    images_per_batch: int,
    base_lr: float,
    warmup_iters: int,
    warmup_factor: float,
    base_epochs: float | None = None,
    dataset_size: int | None = None,
) -> Schedule:
    """The Nx schedule (see the module docstring); `base_lr` is the rate at 16 images per iteration."""
    unit = one_x_iterations(images_per_batch, base_epochs, dataset_size)
    total = multiplier * unit
    if multiplier <= 2:
        steps = (total * 2 / 3, total * 8 / 9)
    else:
        steps = (total - unit * 2 / 3, total - unit * 2 / 9)
    return Schedule(
        total_iterations=round(total),
        steps=tuple(round(s) for s in steps),
        base_lr=base_lr * images_per_batch / REFERENCE_IMAGES_PER_BATCH,
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
        images_per_batch=images_per_batch,
    )


def build_classification_schedule(
    *,
    epochs: float,
    dataset_size: int,
    images_per_batch: int,
    base_lr: float,
    warmup_epochs: float,
    decay: str,
) -> Schedule:
    """ImageNet-style: `base_lr` at 256 images per iteration (linear scaling), linear warm-up from 0.1 x lr, then
    cosine decay to zero or x0.1 steps at 2/3 and 8/9 of the run."""
    iterations_per_epoch = dataset_size / images_per_batch
    total = max(1, round(epochs * iterations_per_epoch))
    return Schedule(
        total_iterations=total,
        steps=() if decay == "cosine" else (round(total * 2 / 3), round(total * 8 / 9)),
        base_lr=base_lr * images_per_batch / 256,
        warmup_iters=round(warmup_epochs * iterations_per_epoch),
        warmup_factor=0.1,
        images_per_batch=images_per_batch,
        decay=decay,
    )


def parameter_groups(
    model: nn.Module, *, weight_decay: float, weight_decay_norm: float, weight_decay_bias: float
) -> list[dict[str, object]]:
    """Trainable parameters in three groups: norm parameters, biases, and the rest, each with its own decay."""
    norm_parameters = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(False)}
    groups: dict[str, list[nn.Parameter]] = {"norm": [], "bias": [], "weight": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        kind = "norm" if id(parameter) in norm_parameters else "bias" if name.endswith(".bias") else "weight"
        groups[kind].append(parameter)
    decay = {"norm": weight_decay_norm, "bias": weight_decay_bias, "weight": weight_decay}
    return [{"params": params, "weight_decay": decay[kind], "name": kind} for kind, params in groups.items() if params]


def build_optimizer(groups: Iterable[dict[str, object]], *, momentum: float) -> torch.optim.SGD:
    """SGD with momentum; the learning rate is set before every step by the schedule."""
    return torch.optim.SGD(list(groups), lr=0.0, momentum=momentum)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
