"""Detections drawn on images: `scratchdet predict`'s pictures and the report's gallery share this one path.

Both draw COCO-format items (ground-truth annotations or results: `bbox` XYWH, optional `segmentation` as
polygons or RLE, optional `keypoints` as x, y, v triples) with torchvision's drawing utilities. A category keeps
its colour in every picture, so the same object reads the same across the gallery's columns.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from scratchdet.data.coco import decode_mask

# Distinct, readable on light and dark backgrounds (Tableau 10); category ids cycle through them.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def colour(category_id: int) -> str:
    return PALETTE[int(category_id) % len(PALETTE)]


def enlarge(picture: torch.Tensor, scale: int) -> torch.Tensor:
    """(3, H, W) uint8 picture made `scale` times larger by repeating pixels (small images stay sharp)."""
    return picture if scale == 1 else picture.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def draw_items(
    picture: torch.Tensor,
    items: Sequence[dict[str, Any]],
    names: dict[int, str],
    scale: int = 1,
    with_scores: bool = True,
) -> torch.Tensor:
    """`picture` (3, H, W) uint8, enlarged `scale` times, with `items` drawn: masks, then boxes labelled with the
    category name (and score, with `with_scores`), then keypoints."""
    height, width = picture.shape[1:]
    drawn = enlarge(picture, scale)
    if not items:
        return drawn
    colours = [colour(item["category_id"]) for item in items]
    masks = [decode_mask(item["segmentation"], height, width) for item in items if item.get("segmentation")]
    if masks and len(masks) == len(items):
        stacked = torch.from_numpy(np.stack(masks).astype(bool))
        stacked = stacked.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        drawn = draw_segmentation_masks(drawn, stacked, alpha=0.45, colors=colours)
    x, y, w, h = torch.tensor([item["bbox"] for item in items], dtype=torch.float64).unbind(1)
    boxes = torch.stack([x, y, x + w, y + h], 1) * scale
    labels = [
        names.get(item["category_id"], str(item["category_id"]))
        + (f" {item['score']:.2f}" if with_scores and "score" in item else "")
        for item in items
    ]
    size = max(10, round(max(drawn.shape[1:]) / 40))  # readable on a 128 px scene enlarged and on a photo alike
    drawn = draw_bounding_boxes(
        drawn,
        boxes,
        labels=labels,
        colors=colours,
        width=2,
        font=_font(),
        font_size=size,
        label_colors="white",
        fill_labels=True,
    )
    for item, item_colour in zip(items, colours, strict=True):
        if item.get("keypoints"):
            points = torch.tensor(item["keypoints"], dtype=torch.float32).reshape(1, -1, 3)
            visible = points[..., 2] > 0
            drawn = draw_keypoints(drawn, points[..., :2] * scale, colors=item_colour, radius=2, visibility=visible)
    return drawn


@functools.cache
def _font() -> str:
    """A TrueType font for the labels (torchvision's built-in bitmap font cannot be scaled): matplotlib's own."""
    from matplotlib import font_manager  # only where something is drawn: matplotlib is slow to import

    return str(font_manager.findfont("DejaVu Sans"))


def png(picture: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    F.to_pil_image(picture).save(buffer, format="PNG")
    return buffer.getvalue()
