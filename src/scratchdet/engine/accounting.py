"""Exact counts of what a model has seen: images, instances and input pixels (the paper's Figure 2).

Instances are the non-crowd targets an image carries after its transforms; pixels are height × width of the input
after resizing and before padding. A run that starts from a pre-trained checkpoint carries that checkpoint's own
counts under `pretrain`, so "pre-training + fine-tuning" can be compared with "from scratch".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class SeenCounts:
    images: int = 0
    instances: int = 0
    pixels: int = 0

    def add(self, other: SeenCounts) -> None:
        self.images += other.images
        self.instances += other.instances
        self.pixels += other.pixels

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SeenCounts:
        data = data or {}
        return cls(int(data.get("images", 0)), int(data.get("instances", 0)), int(data.get("pixels", 0)))


def batch_counts(images: list[torch.Tensor], targets: list[dict[str, Any]]) -> SeenCounts:
    """Counts of one batch: images are (3, H, W) tensors before padding; targets carry `boxes` (N, 4)."""
    return SeenCounts(
        images=len(images),
        instances=sum(int(t["boxes"].shape[0]) for t in targets),
        pixels=sum(int(image.shape[-2]) * int(image.shape[-1]) for image in images),
    )
