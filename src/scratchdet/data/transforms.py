"""Training and test transforms (torchvision.transforms.v2): image, boxes and masks move together.

Training: resize the shorter side to a size drawn from `min_sizes` (capped so the longer side is at most
`max_size`), horizontal flip, float conversion, normalisation. Test: float conversion and normalisation only;
the detector resizes test images itself and maps its detections back to the original image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torchvision.transforms import v2

Result = TypeVar("Result")


def with_seed(seed: int | None, function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` with the global torch random stream seeded by `seed` (unseeded when None).

    Random transforms draw from that stream; seeding per item makes an item independent of which worker loads
    it, and fork_rng leaves the caller's stream (with 0 workers, the model's) untouched.
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return function(*args)


def _to_normalized_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    # A plain dtype converts the image only; boxes and masks keep theirs.
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def build_train_transforms(
    min_sizes: Sequence[int], max_size: int, flip_prob: float, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Random shorter-side resize among `min_sizes` with the longer side capped at `max_size`, then a flip."""
    steps: list[v2.Transform] = [v2.RandomShortestSize(min_size=list(min_sizes), max_size=max_size)]
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    return v2.Compose(steps + _to_normalized_float(mean, std))


def build_test_transforms(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose(_to_normalized_float(mean, std))
