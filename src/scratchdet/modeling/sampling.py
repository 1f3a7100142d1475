"""Anchor and RoI sampling drawn from each image's own seed, so training does not depend on the process count.

torchvision's `BalancedPositiveNegativeSampler` draws from the global random stream, image after image: which
anchors and RoIs a batch samples then depends on how the global batch is split over processes. Here each image's
draw comes from a generator seeded by the image's `sample_seed` (set by the training batches for every slot of the
global batch), so 1 process with a batch of 16 and 8 processes with 2 each sample exactly the same anchors and RoIs.
The distribution is torchvision's: the same counts, uniformly at random. Targets without `sample_seed` (a user's
own loop) fall back to torchvision's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

RPN_STREAM = 1
ROI_STREAM = 2
STREAM_OFFSET = 0x9E3779B97F4A7C15  # keeps the RPN's and the RoI heads' draws of one image apart


class SeededSampler(BalancedPositiveNegativeSampler):
    """`BalancedPositiveNegativeSampler` whose draw for image i comes from `seeds[i]` when seeds are set."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float, stream: int) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.stream = stream
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.seeds is None or len(self.seeds) != len(matched_idxs):
            return super().__call__(matched_idxs)
        positives, negatives = [], []
        for matched, seed in zip(matched_idxs, self.seeds, strict=True):
            generator = torch.Generator().manual_seed((seed + self.stream * STREAM_OFFSET) % 2**63)
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_positive = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_negative = min(negative.numel(), self.batch_size_per_image - num_positive)
            positives.append(_chosen(matched, positive, num_positive, generator))
            negatives.append(_chosen(matched, negative, num_negative, generator))
        return positives, negatives


def _chosen(matched: torch.Tensor, candidates: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """A uint8 mask over `matched` with `count` of `candidates` set, drawn uniformly."""
    order = torch.randperm(candidates.numel(), generator=generator)[:count].to(candidates.device)
    mask = torch.zeros_like(matched, dtype=torch.uint8)
    mask[candidates[order]] = 1
    return mask


def install_seeded_samplers(detector: GeneralizedRCNN) -> None:
    """Replace the RPN's and RoI heads' samplers; seeds are read from the targets of each training forward."""
    samplers = []
    heads: tuple[tuple[Any, int], ...] = ((detector.rpn, RPN_STREAM), (detector.roi_heads, ROI_STREAM))
    for head, stream in heads:
        old = head.fg_bg_sampler
        head.fg_bg_sampler = SeededSampler(old.batch_size_per_image, old.positive_fraction, stream)
        samplers.append(head.fg_bg_sampler)

    def take_seeds(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        targets: Sequence[dict[str, Any]] | None = args[1] if len(args) > 1 else kwargs.get("targets")
        seeds = [t.get("sample_seed") for t in targets] if module.training and targets else []
        for sampler in samplers:
            sampler.seeds = seeds if seeds and all(s is not None for s in seeds) else None

    detector.register_forward_pre_hook(take_seeds, with_kwargs=True)
