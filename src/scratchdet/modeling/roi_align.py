"""Multi-scale RoIAlign for CPU training, computed with matrix products instead of torchvision's scalar kernels.

torchvision's CPU RoIAlign kernels visit every (RoI, channel, bin, sample) one at a time and recompute the same
interpolation weights for every channel; the backward pass runs on one thread. Together they were about a fifth of
the demo model's CPU step (bench/train_step.py). The sampling is separable, though: a bin averages
`sampling_ratio` x `sampling_ratio` bilinear samples, and each bilinear weight is a row weight times a column
weight. So `separable_roi_align` gathers the feature rows each output row reads (one `index_select`), mixes them
with their row weights, and then mixes columns with a small per-RoI matrix (two batched matrix products). Every
step is an ATen op with its own multi-threaded forward and backward, and the result is torchvision's (aligned=False,
the same sample points and edge rules) up to float32 rounding: the sums are grouped differently. CUDA tensors, and
the adaptive sampling ratio (<= 0), use torchvision's kernels as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _filter_input, _setup_scales

GATHER_BUDGET = 1 << 22  # floats gathered at once (16 MiB): RoIs go in chunks, so a large feature map stays cheap


def _axis_taps(start: Tensor, end: Tensor, bins: int, ratio: int, size: int) -> tuple[Tensor, Tensor]:
    """Along one axis of length `size`: for each RoI and output bin, the 2 * ratio feature indices its samples
    interpolate between and their weights (divided by `ratio`, a bin being the mean of its samples); (R, bins, 2r).

    The sample points and edge rules are those of torchvision's kernel: a sample more than one pixel outside
    the map weighs nothing, one just outside is clamped to the border.
    """
    bin_size = (end - start).clamp(min=1.0) / bins
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device).repeat_interleave(ratio)
    offset = (torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5).repeat(bins)
    coordinate = (start[:, None] + bin_index * bin_size[:, None]) + offset * bin_size[:, None] / ratio
    inside = (coordinate >= -1.0) & (coordinate <= size)
    coordinate = coordinate.clamp(min=0.0)
    low = coordinate.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    upper = torch.where(low >= size - 1, torch.zeros_like(coordinate), coordinate - low.to(coordinate.dtype))
    lower = 1.0 - upper
    weights = torch.stack([lower, upper], dim=-1) * inside[..., None] / ratio
    indices = torch.stack([low, high], dim=-1)
    return indices.view(len(start), bins, 2 * ratio), weights.view(len(start), bins, 2 * ratio)


def _pool_chunk(rows: Tensor, rois: Tensor, size: tuple[int, int, int], output_size: tuple[int, int],
                scale: float, ratio: int) -> Tensor:  # fmt: skip
    """RoIAlign of `rois` (R, 5) over `rows`, the feature map as (B * H, W * C) rows; returns (R, C, PH, PW)."""
    height, width, channels = size
    out_height, out_width = output_size
    count = len(rois)
    batch = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, i] * scale for i in range(1, 5))
    row_index, row_weight = _axis_taps(y1, y2, out_height, ratio, height)
    column_index, column_weight = _axis_taps(x1, x2, out_width, ratio, width)
    gathered = rows.index_select(0, (batch[:, None, None] * height + row_index).reshape(-1))
    mixed_rows = torch.bmm(
        row_weight.reshape(count * out_height, 1, 2 * ratio),
        gathered.view(count * out_height, 2 * ratio, width * channels),
    )  # (R * PH, 1, W * C)
    by_column = mixed_rows.view(count, out_height, width, channels).transpose(1, 2)
    column_matrix = rows.new_zeros(count, out_width, width).scatter_add_(2, column_index, column_weight)
    pooled = torch.bmm(column_matrix, by_column.reshape(count, width, out_height * channels))  # (R, PW, PH * C)
    return pooled.view(count, out_width, out_height, channels).permute(0, 3, 2, 1)


def separable_roi_align(
    features: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float, sampling_ratio: int
) -> Tensor:
    """`torchvision.ops.roi_align(features, rois, output_size, scale, sampling_ratio)` (aligned=False) on the
    CPU, written as gathers and matrix products; `rois` is (R, 5): batch index, x1, y1, x2, y2."""
    if features.is_cuda or sampling_ratio <= 0 or len(rois) == 0 or torch.is_autocast_enabled("cpu"):
        return roi_align(features, rois, output_size, scale, sampling_ratio)  # autocast: torchvision's casting
    batches, channels, height, width = features.shape
    rows = features.permute(0, 2, 3, 1).reshape(batches * height, width * channels)
    per_roi = output_size[0] * 2 * sampling_ratio * width * channels
    step = max(1, GATHER_BUDGET // per_roi)
    chunks = [
        _pool_chunk(rows, rois[start : start + step], (height, width, channels), output_size, scale, sampling_ratio)
        for start in range(0, len(rois), step)
    ]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def roi_format(boxes: list[Tensor]) -> Tensor:
    """torchvision's `_convert_to_roi_format`, (R, 5): each box after its image's index, with a fixed number of
    operations (torchvision's: three an image)."""
    flat = torch.cat(boxes)
    image = np.repeat(np.arange(len(boxes), dtype=np.float64), [own.shape[0] for own in boxes])  # on the host
    column = torch.from_numpy(image).to(device=flat.device, dtype=flat.dtype, non_blocking=True)
    return torch.cat([column[:, None], flat], 1)


class SeparableMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` (same level assignment, same output up to rounding), computed by
    `separable_roi_align` on the CPU when `separable` (else by torchvision's kernels).

    torchvision finds each FPN level's RoIs with `torch.where` (a host wait a level on a GPU). Given the RoIs'
    levels and how many fall on each (`levels_of`, read by the caller with other numbers it needs), the RoIs are
    sorted by level instead and nothing waits; the output is the same to the last bit (the same RoIs, in the same
    order, meet each level's kernel).
    """

    def __init__(self, *args: Any, separable: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.separable = separable

    def levels_of(self, x: dict[str, Tensor], boxes: Tensor, image_shapes: list[tuple[int, int]]) -> Tensor:
        """The FPN level (0 = the finest) each box (..., 4) is pooled from: torchvision's rule."""
        self._features(x, image_shapes)
        return self.map_levels([boxes.reshape(-1, 4)]).view(boxes.shape[:-1])

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        levels: tuple[Tensor, list[int]] | None = None,
    ) -> Tensor:
        """Pool `boxes` (one tensor an image); `levels`: each RoI's level (of all images' RoIs in order) and the
        number of RoIs on each level, as `levels_of` gives them."""
        features = self._features(x, image_shapes)
        scales: list[float] = self.scales
        rois = roi_format(boxes)
        if levels is None:
            level_of_roi = self.map_levels(boxes)
            chosen = [torch.where(level_of_roi == level)[0] for level in range(len(features))]
        else:
            level_of_roi, sizes = levels
            order = torch.argsort(level_of_roi, stable=True)  # each level's RoIs in their order, as torch.where
            chosen = list(order.split(sizes))
        pooled = torch.cat([
            self._align(level_features, rois[indices], scale).to(features[0].dtype)
            for level_features, scale, indices in zip(features, scales, chosen, strict=True)
        ])  # fmt: skip
        return torch.empty_like(pooled).index_copy_(0, torch.cat(chosen), pooled)  # back in the RoIs' order

    def _features(self, x: dict[str, Tensor], image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        features = _filter_input(x, self.featmap_names)
        pooler: Any = self  # torchvision declares scales and map_levels without types
        if pooler.scales is None or pooler.map_levels is None:
            pooler.scales, pooler.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        return features

    def _align(self, features: Tensor, rois: Tensor, scale: float) -> Tensor:
        output_size = (int(self.output_size[0]), int(self.output_size[1]))
        align = separable_roi_align if self.separable else roi_align
        return align(features, rois, output_size, scale, self.sampling_ratio)
