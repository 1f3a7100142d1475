"""Running a detector over an evaluation loader into an evaluator."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from scratchdet.evaluation.coco import CocoEvaluator


@torch.no_grad()
def run_inference(
    model: nn.Module,
    batches: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    evaluator: CocoEvaluator,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    total: int | None = None,
) -> None:
    """Feed every batch through `model` in eval mode; the evaluator collects the detections."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        for images, targets in tqdm(batches, total=total, desc="eval", disable=None if progress else True, leave=False):
            outputs = model([image.to(device) for image in images])
            evaluator.process(targets, outputs)
    finally:
        model.train(was_training)
