"""Training and test transforms (torchvision.transforms.v2): image, boxes and masks move together.

Training: resize the shorter side to a size drawn from `min_sizes` (capped so the longer side is at most
`max_size`), horizontal flip. Test: none; the detector resizes test images itself and maps its detections back to
the original image. Images stay 8-bit: the detector scales and normalises them on its own device (a quarter of
float32's bytes to copy there; `modeling/detector.py`).
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
    it, and fork_rng leaves the caller's stream (with 0 workers, the model's) untouched. Only the CPU generator is
    seeded: `torch.manual_seed` would also reseed every GPU's generator (with 0 workers, the training process's)
    and, where CUDA is not initialised (a loader's workers), record a stack trace to do so later, 0.7 ms an item.
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        return function(*args)


class HorizontalFlipSwappingKeypoints(v2.Transform):
    """A horizontal flip that also swaps left and right keypoints: a flipped left wrist is a right wrist.

    `flip_index[k]` is the keypoint that k becomes (e.g. left_eye ↔ right_eye). The target's `keypoints`
    (N, K, 2) and `keypoint_visibility` (N, K) are reordered along K after torchvision flips the positions.
    """

    def __init__(self, p: float, flip_index: Sequence[int]) -> None:
        super().__init__()
        self.p = p
        self.flip_index = list(flip_index)
        self.flip = v2.RandomHorizontalFlip(p=1.0)

    def forward(self, *inputs: Any) -> Any:
        if float(torch.rand(())) >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        image, target = self.flip(*inputs)
        target = dict(target)
        for key in ("keypoints", "keypoint_visibility"):
            if key in target:
                dim = -2 if key == "keypoints" else -1
                target[key] = target[key].index_select(dim, torch.tensor(self.flip_index))
        return image, target


def keypoint_flip_index(names: Sequence[str]) -> list[int]:
    """For keypoint names, the index each one becomes under a horizontal flip ("left_*" ↔ "right_*")."""

    def mirrored(name: str) -> str:
        if "left" in name:
            return name.replace("left", "right")
        return name.replace("right", "left")

    position = {name: i for i, name in enumerate(names)}
    return [position.get(mirrored(name), i) for i, name in enumerate(names)]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after `v2.RandomShortestSize` draws `min_size`: the shorter side to `min_size`, the longer
    one capped at `max_size`, each truncated to whole pixels as torchvision does (tested against it)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def build_train_transforms(
    min_sizes: Sequence[int],
    max_size: int,
    flip_prob: float,
    keypoint_flip: Sequence[int] | None = None,
) -> v2.Compose:
    """Random shorter-side resize among `min_sizes` with the longer side capped at `max_size`, then a flip
    (swapping left and right keypoints by `keypoint_flip` when the targets have keypoints)."""
    steps: list[v2.Transform] = [v2.RandomShortestSize(min_size=list(min_sizes), max_size=max_size)]
    if flip_prob > 0 and keypoint_flip is not None:
        steps.append(HorizontalFlipSwappingKeypoints(flip_prob, keypoint_flip))
    elif flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    steps.append(v2.ClampBoundingBoxes())  # resizing in float can put a corner 1e-6 past the edge (found by a test)
    return v2.Compose(steps)
