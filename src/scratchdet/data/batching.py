"""The order of training batches: an endless, seeded stream that depends only on the seed and the iteration.

Batch k is the same whatever the run's total length, the number of data-loader workers, or whether the run was
resumed: resuming at iteration k just starts the stream there (the indices are cheap to replay). Each item comes
with its own seed for the random transforms, so a resumed or forked run sees exactly the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def _epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def _item_seed(seed: int, iteration: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, slot]).generate_state(1, np.uint64)[0] >> 1)


class TrainingBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Endless batches of `(dataset_position, transform_seed)`, starting at `start_iteration`.

    Each epoch is a seeded permutation of the dataset. With `aspect_groups`, images are buffered per group and a
    batch is emitted when a group fills (leftovers carry over into the next epoch, so nothing is skipped), which
    keeps padding small. `rank`/`world_size` select this process's consecutive share of each global batch.
    """

    def __init__(
        self,
        dataset_size: int,
        images_per_batch: int,
        seed: int,
        aspect_groups: Sequence[int] | None = None,
        start_iteration: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot draw batches from an empty dataset")
        if images_per_batch % world_size:
            raise ValueError(f"images_per_batch={images_per_batch} is not divisible by world_size={world_size}")
        self.dataset_size = dataset_size
        self.images_per_batch = images_per_batch
        self.seed = seed
        self.groups = list(aspect_groups) if aspect_groups is not None else [0] * dataset_size
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size

    def global_batches(self) -> Iterator[list[int]]:
        """Dataset positions of every global batch, from iteration 0."""
        buffers: dict[int, list[int]] = {}
        epoch = 0
        while True:
            for position in _epoch_order(self.seed, epoch, self.dataset_size):
                bucket = buffers.setdefault(self.groups[position], [])
                bucket.append(int(position))
                if len(bucket) == self.images_per_batch:
                    yield bucket
                    buffers[self.groups[position]] = []
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.images_per_batch // self.world_size
        first = self.rank * share
        for iteration, batch in enumerate(self.global_batches()):
            if iteration < self.start_iteration:
                continue
            yield [(batch[slot], _item_seed(self.seed, iteration, slot)) for slot in range(first, first + share)]

    def __len__(self) -> int:  # endless; the trainer stops it
        raise TypeError("TrainingBatches is endless")


Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]  # the images and targets, one an item, as models take them


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Keep images of different sizes as a list: the detector pads them into one tensor itself."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class PackedBatch:
    """A training batch packed for the trip to the device: the images, and each tensor field of the targets, of
    every item concatenated into one buffer, so that pinning and copying it take one transfer per kind, not one
    per item and kind (on a GPU each copy costs the host several microseconds: four an image for Mask R-CNN, two
    for classification). `to(device)` gives back the lists the models take, as views into the copied buffers; the
    values are those `collate` gives (plain tensors: torchvision's tv_tensor wrappers are dropped)."""

    def __init__(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> None:
        self.keys = [list(target) for target in targets]
        fields = {key for target in targets for key, value in target.items() if torch.is_tensor(value)}
        self.rest = [{k: v for k, v in target.items() if k not in fields} for target in targets]
        self.buffers: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, list[torch.Size]] = {}
        self._pack("image", images)
        for key in sorted(fields):
            self._pack(key, [target.get(key) for target in targets])

    def _pack(self, key: str, tensors: list[Any]) -> None:
        if not all(torch.is_tensor(t) for t in tensors) or len({(t.dtype, t.dim() == 0) for t in tensors}) != 1:
            raise ValueError(f"batch field {key!r}: every item needs a tensor of one dtype to be packed")
        plain = [t.as_subclass(torch.Tensor) for t in tensors]
        self.shapes[key] = [t.shape for t in plain]
        if plain[0].dim() == 0:  # a number an item (a class label)
            self.buffers[key] = torch.stack(plain)
        elif len({t.shape[1:] for t in plain}) == 1:  # one split along the first dimension gives the items back
            self.buffers[key] = torch.cat(plain)
        else:  # items of different sizes (images, masks): flat, viewed in their shapes again
            self.buffers[key] = torch.cat([t.reshape(-1) for t in plain])

    def pin_memory(self) -> PackedBatch:
        """Called by the DataLoader's pinning thread (with pin_memory=True) on each batch."""
        self.buffers = {key: buffer.pin_memory() for key, buffer in self.buffers.items()}
        return self

    def to(self, device: torch.device) -> Batch:
        """The images and targets on `device`: one asynchronous copy a buffer (pinned: the host does not wait)."""
        items: dict[str, list[torch.Tensor]] = {}
        for key, buffer in self.buffers.items():
            moved, shapes = buffer.to(device, non_blocking=True), self.shapes[key]
            if all(len(shape) == 0 for shape in shapes):
                items[key] = list(moved.unbind(0))
            elif moved.dim() > 1 or all(len(shape) == 1 for shape in shapes):
                items[key] = list(moved.split([shape[0] for shape in shapes]))
            else:
                pieces = moved.split([shape.numel() for shape in shapes])
                items[key] = [piece.view(shape) for piece, shape in zip(pieces, shapes, strict=True)]
        targets = [
            {key: items[key][i] if key in items else rest[key] for key in keys}
            for i, (keys, rest) in enumerate(zip(self.keys, self.rest, strict=True))
        ]
        return items["image"], targets


def pack(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> PackedBatch:
    """The training loaders' collate function: the batch as a `PackedBatch`."""
    images, targets = collate(batch)
    return PackedBatch(images, targets)


def to_device(batch: PackedBatch | Batch, device: torch.device) -> Batch:
    """A batch of either form on `device` (a collated one copied an item and field at a time, asynchronously)."""
    if isinstance(batch, PackedBatch):
        return batch.to(device)
    images, targets = batch
    moved = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return [image.to(device, non_blocking=True) for image in images], moved
