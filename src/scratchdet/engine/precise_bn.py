"""Precise BN: recompute batch-norm running statistics over a number of training batches before evaluating.

The running averages a BN layer keeps during training lag behind the weights (they average statistics of older
weights, with momentum 0.1); with small per-device batches they are also noisy. Recomputing them as a plain
average over N batches of the current weights (Wu & Johnson, "Rethinking batch in BatchNorm") gives better test
statistics. With SyncBN in a distributed run every process must take part (the layers synchronize). GroupNorm and
FrozenBN have no running statistics: nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from scratchdet.data.batching import Batch, PackedBatch, to_device

BatchNorm = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module,
    batches: Iterator[PackedBatch | Batch],
    iterations: int,
    device: torch.device,
) -> int:
    """Replace every BN layer's running mean and variance by their average over `iterations` batches.

    `model` is run in training mode (its training forward, losses discarded). Returns how many layers changed.
    """
    layers = [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]
    if not layers or iterations <= 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches below
    was_training = model.training
    model.train()
    try:
        for _ in range(iterations):
            model(*to_device(next(batches), device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)
