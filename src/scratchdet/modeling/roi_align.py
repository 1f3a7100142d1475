"""Multi-scale RoIAlign whose CPU backward pass runs on several threads.

torchvision's CPU kernel for the RoIAlign backward pass is single-threaded; at the small inputs of CPU training it
is about a fifth of a Mask R-CNN step (bench/train_step.py). Its result is a sum over RoIs, so the RoIs are split
into one block per thread, each block's gradient is computed by torchvision's own kernel (which releases the GIL),
and the blocks are added in a fixed order: the same sums, grouped differently (float32 rounding, ~1e-6 relative),
and deterministic for a given thread count. The forward pass and any CUDA tensor use torchvision's kernels as is.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

_pool: concurrent.futures.ThreadPoolExecutor | None = None
MIN_ROIS_PER_THREAD = 16


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="roi_align_backward")
    return _pool


class _ThreadedRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, features: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float, sampling_ratio: int
    ) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.settings = (scale, output_size, sampling_ratio, features.shape)
        return torch.ops.torchvision.roi_align(features, rois, scale, *output_size, sampling_ratio, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        scale, (height, width), sampling_ratio, shape = ctx.settings

        def block(rows: slice) -> Tensor:
            return torch.ops.torchvision._roi_align_backward(
                grad[rows].contiguous(), rois[rows], scale, height, width, *shape, sampling_ratio, False
            )

        blocks = min(torch.get_num_threads(), max(1, len(rois) // MIN_ROIS_PER_THREAD))
        bounds = [len(rois) * i // blocks for i in range(blocks + 1)]
        parts = list(_threads().map(block, [slice(a, b) for a, b in itertools.pairwise(bounds)]))
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total, None, None, None, None


def threaded_roi_align(
    features: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float, sampling_ratio: int
) -> Tensor:
    """`torchvision.ops.roi_align` (aligned=False) with the CPU backward pass split over threads."""
    plain = features.is_cuda or not (torch.is_grad_enabled() and features.requires_grad)
    if plain or torch.is_autocast_enabled(features.device.type):  # autocast: torchvision's casting rules
        return roi_align(features, rois, output_size, scale, sampling_ratio)
    pooled: Tensor = _ThreadedRoIAlign.apply(features, rois, output_size, scale, sampling_ratio)
    return pooled


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` (same level assignment, same output) using `threaded_roi_align`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        pooler: Any = self  # torchvision declares scales and map_levels without types
        if pooler.scales is None or pooler.map_levels is None:
            pooler.scales, pooler.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        scales: list[float] = pooler.scales
        rois = _convert_to_roi_format(boxes)
        output_size = tuple(self.output_size)
        levels = pooler.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *output_size))
        for level, (level_features, scale) in enumerate(zip(features, scales, strict=True)):
            chosen = torch.where(levels == level)[0]
            pooled = threaded_roi_align(level_features, rois[chosen], output_size, scale, self.sampling_ratio)
            result[chosen] = pooled.to(result.dtype)
        return result
