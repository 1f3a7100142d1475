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


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images of different sizes as a list: the detector pads them into one tensor itself."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
