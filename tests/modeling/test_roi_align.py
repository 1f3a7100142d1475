"""The separable multi-scale RoIAlign computes what torchvision's does: the same pooled features and gradients up
to float32 rounding, at the maps' edges too, in chunks or at once, and deterministically."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from scratchdet.modeling import roi_align as separable
from scratchdet.modeling.roi_align import SeparableMultiScaleRoIAlign, separable_roi_align


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


@pytest.mark.parametrize("output_size", [7, 14, (5, 9)])
def test_same_output_and_gradients_as_torchvision(output_size: int | tuple[int, int]) -> None:
    levels = ["0", "1", "2", "3"]
    ours, our_grads = _pool_and_grad(SeparableMultiScaleRoIAlign(levels, output_size, 2, canonical_scale=64))
    again, grads_again = _pool_and_grad(SeparableMultiScaleRoIAlign(levels, output_size, 2, canonical_scale=64))
    theirs, their_grads = _pool_and_grad(MultiScaleRoIAlign(levels, output_size, 2, canonical_scale=64))
    assert theirs.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, again)  # deterministic
    for mine, reference, repeat in zip(our_grads, their_grads, grads_again, strict=True):
        assert reference.abs().sum() > 0
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(mine, repeat)


def test_edges_and_degenerate_rois_follow_torchvision() -> None:
    """RoIs reaching past the map (samples clamped to the border, or beyond one pixel and weighing nothing),
    of zero size, and on the last row and column."""
    features = torch.randn(2, 3, 9, 13, generator=torch.Generator().manual_seed(1), requires_grad=True)
    rois = torch.tensor([
        [0, -20.0, -20.0, 10.0, 10.0], [1, 40.0, 25.0, 70.0, 50.0], [0, 5.0, 5.0, 5.0, 5.0],
        [1, 48.0, 32.0, 52.0, 36.0], [0, -10.0, 30.0, 60.0, 31.0], [1, 0.0, 0.0, 52.0, 36.0],
    ])  # fmt: skip
    ours = separable_roi_align(features, rois, (4, 3), 0.25, 2)
    theirs = roi_align(features, rois, (4, 3), 0.25, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(2))
    (our_grad,) = torch.autograd.grad((ours * weights).sum(), features)
    (their_grad,) = torch.autograd.grad((theirs * weights).sum(), features)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)


def test_rois_in_chunks_give_what_all_at_once_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    features, boxes, _ = _inputs()
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    level = features["1"]
    at_once = separable_roi_align(level, rois, (7, 7), 0.125, 2)
    monkeypatch.setattr(separable, "GATHER_BUDGET", 1)  # one RoI a chunk
    one_by_one = separable_roi_align(level, rois, (7, 7), 0.125, 2)
    # The same sums; the batched matrix products may block them differently for another batch size.
    torch.testing.assert_close(at_once, one_by_one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("separable_kernel", [True, False])
def test_rois_split_by_counted_levels_give_what_finding_each_level_gives(separable_kernel: bool) -> None:
    """Given each RoI's level and the count on each level (`levels_of`, read with other numbers), the pooler sorts
    the RoIs by level instead of finding each level's with a host wait: the same output and gradients, bit for bit."""
    pooler = SeparableMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=64, separable=separable_kernel)
    found, found_grads = _pool_and_grad(pooler)
    features, boxes, shapes = _inputs()
    levels = pooler.levels_of(features, torch.stack(boxes), shapes).flatten()
    counts = torch.bincount(levels, minlength=4).tolist()
    assert all(count > 0 for count in counts), counts  # every level's RoIs are interleaved with the others'
    split = pooler(features, boxes, shapes, (levels, counts))
    split.backward(torch.linspace(-1, 1, split.numel()).reshape(split.shape))
    assert torch.equal(split.detach(), found)
    for mine, theirs in zip([features[k].grad for k in sorted(features)], found_grads, strict=True):
        assert torch.equal(mine, theirs)
