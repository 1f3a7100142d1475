"""The threaded multi-scale RoIAlign computes what torchvision's does: same forward, same gradients up to rounding."""

from __future__ import annotations

import torch
from torchvision.ops import MultiScaleRoIAlign

from scratchdet.modeling.roi_align import ThreadedMultiScaleRoIAlign


def _inputs() -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(0)
    features = {str(level): torch.randn(2, 8, 64 >> level, 64 >> level, generator=generator, requires_grad=True)
                for level in range(4)}  # fmt: skip
    boxes = []
    for _ in range(2):
        corner = torch.rand(150, 2, generator=generator) * 100
        size = 2 + torch.rand(150, 1, generator=generator) ** 2 * 150  # every FPN level gets RoIs
        boxes.append(torch.cat([corner, corner + size], dim=1))
    return features, boxes, [(256, 256), (256, 256)]


def _pool_and_grad(pooler: MultiScaleRoIAlign) -> tuple[torch.Tensor, list[torch.Tensor]]:
    features, boxes, shapes = _inputs()
    pooled = pooler(features, boxes, shapes)
    pooled.backward(torch.linspace(-1, 1, pooled.numel()).reshape(pooled.shape))
    return pooled.detach(), [features[k].grad for k in sorted(features)]


def test_same_output_and_gradients_as_torchvision() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the backward pass is split in two blocks
    try:
        ours, our_grads = _pool_and_grad(ThreadedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=64))
        _, grads_again = _pool_and_grad(ThreadedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=64))
    finally:
        torch.set_num_threads(threads)
    theirs, their_grads = _pool_and_grad(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=64))
    assert torch.equal(ours, theirs)
    for mine, reference, repeat in zip(our_grads, their_grads, grads_again, strict=True):
        assert reference.abs().sum() > 0
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(mine, repeat)  # deterministic
