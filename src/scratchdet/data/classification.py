"""ImageFolder classification data for pre-training the backbone (ImageNet's layout works unchanged).

`ROOT/<split>/<class>/<image>`: classes are the sorted folder names. Items can be asked for as `(index, seed)`,
like the detection data, so random crops do not depend on the worker that loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from scratchdet.data.coco import load_rgb
from scratchdet.data.transforms import with_seed
from scratchdet.errors import ScratchdetError


class ClassificationFolder(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """Item: (image float (3, S, S), {"label": int64 scalar tensor})."""

    def __init__(self, root: Path, transforms: v2.Transform, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ScratchdetError(
                f"classification folder {self.root} not found; point pretrain.root at an ImageFolder "
                "(ROOT/train/<class>/*.png) or generate one with `scratchdet data synth`"
            )
        found, _ = find_classes(str(self.root))
        self.classes = list(classes) if classes is not None else found
        if classes is not None and found != self.classes:
            raise ScratchdetError(f"{self.root}: classes {found} differ from the training split's {self.classes}")
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples = make_dataset(str(self.root), index, extensions=IMG_EXTENSIONS)
        if not self.samples:
            raise ScratchdetError(f"{self.root}: no images found in its class folders")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        position, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[position]
        image = v2.functional.pil_to_tensor(load_rgb(Path(path)))
        return with_seed(seed, self.transforms, image), {"label": torch.tensor(label)}


def build_classification_transforms(
    size: int, min_crop_scale: float, mean: Sequence[float], std: Sequence[float], train: bool
) -> v2.Compose:
    """Train: random-resized-crop and flip. Val: resize to 8/7 of the crop, centre crop (ImageNet's 256 → 224)."""
    if train:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(min_crop_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [v2.Resize(round(size * 8 / 7), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
