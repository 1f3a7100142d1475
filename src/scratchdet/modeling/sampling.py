"""Anchor and RoI sampling for a whole batch at once, on the device, drawn from each image's own seed.

torchvision's `BalancedPositiveNegativeSampler` draws with `randperm` from the global random stream, image after
image: which anchors and RoIs a batch samples then depends on how the global batch is split over processes, and
on a GPU each image costs host waits. Here every candidate of image b gets a random key, a hash of (the image's
seed, the head's stream, the candidate's index in its image); the sample is the candidates with the smallest keys.
The draw is then a pure function of (seed, image, candidate): the same in 1 process with a batch of 16 and in 8
processes with 2 each, on the CPU and on a GPU, and it needs no host wait. Its distribution is torchvision's: as many
positives and negatives, each subset of that size equally likely (keys are uniform and distinct).

The hash is 32-bit integer arithmetic carried in int64 tensors (every product stays below 2**63), so every device
computes the same bits. The seed of image b is its `sample_seed` (set for every slot of the global batch by the
training batches); without one (a user's own loop) it comes from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

RPN_STREAM = 1
ROI_STREAM = 2
INDEX_BITS = 24  # a key is (hash << 24) | index: distinct within an image of up to 16.7 million candidates
MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9  # spreads consecutive indices over the 32-bit range before the hash


def image_keys(seeds: Sequence[int | None], stream: int, device: torch.device) -> Tensor:
    """One 32-bit number per image (int64, on `device`) from its seed and the head's stream, mixed on the host."""
    if any(seed is None for seed in seeds):
        seeds = torch.randint(2**62, (len(seeds),)).tolist()  # a CPU tensor: no device wait
    mixed = [_splitmix64((int(seed) + stream * 0xD1B54A32D192ED03) % 2**64) >> 32 for seed in seeds]  # type: ignore[arg-type]
    # An asynchronous copy from pageable memory stages the data and returns: the host does not wait for the device.
    return torch.tensor(mixed, dtype=torch.int64).to(device, non_blocking=True)


def candidate_keys(per_image: Tensor, index: Tensor) -> Tensor:
    """Distinct random keys (B, N) for candidates at `index` (B, N) (their positions in their own image) of
    images with keys `per_image` (B,)."""
    if index.shape[-1] >= 2**INDEX_BITS:
        raise ValueError(f"{index.shape[-1]} candidates an image; sampling handles fewer than {2**INDEX_BITS}")
    mixed = _lowbias32((per_image[:, None] + index * GOLDEN32) & MASK32)
    return (mixed << INDEX_BITS) | index


def balanced_sample(
    labels: Tensor, keys: Tensor, batch_size_per_image: int, positive_fraction: float
) -> tuple[Tensor, Tensor]:
    """Boolean masks (B, N) of the sampled positives (label >= 1) and negatives (label 0); -1 is never sampled.

    torchvision's counts: up to `batch_size_per_image * positive_fraction` positives, negatives fill the rest.
    """
    positive = labels >= 1
    negative = labels == 0
    num_positive = positive.sum(1).clamp(max=int(batch_size_per_image * positive_fraction))
    num_negative = negative.sum(1).clamp(max=batch_size_per_image - num_positive)
    return (
        _smallest(keys, positive, num_positive, int(batch_size_per_image * positive_fraction)),
        _smallest(keys, negative, num_negative, batch_size_per_image),
    )


def _smallest(keys: Tensor, candidate: Tensor, count: Tensor, most: int) -> Tensor:
    """A mask of the `count[b]` candidates of row b with the smallest keys (`count` <= `most`, candidates)."""
    most = min(most, keys.shape[1])
    chosen = torch.zeros_like(candidate)
    if most == 0:
        return chosen
    excluded = torch.iinfo(torch.int64).max
    order = torch.where(candidate, keys, excluded).topk(most, dim=1, largest=False).indices
    rank = torch.arange(most, device=keys.device)
    return chosen.scatter_(1, order, rank < count[:, None])


def _lowbias32(x: Tensor) -> Tensor:
    """A 32-bit integer hash with good avalanche (Chris Wellons' "lowbias32"), on int64 tensors below 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: Tensor, factor: int) -> Tensor:
    """(x * factor) mod 2**32 for x < 2**32, without an intermediate of 2**63 or more: split x in 16-bit halves."""
    return ((x & 0xFFFF) * factor + (((x >> 16) * factor) & 0xFFFF) * 0x10000) & MASK32


def _splitmix64(x: int) -> int:
    """Steele, Lea and Flood's SplitMix64 finaliser on Python integers (a seed's 64 bits, well mixed)."""
    x = (x + 0x9E3779B97F4A7C15) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return x ^ (x >> 31)
