"""The batched RPN and RoI heads compute what torchvision's compute, image by image, given the same draw."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

from scratchdet.modeling import heads
from scratchdet.modeling.heads import BELOW_LOW, match, padded, pairwise_iou
from scratchdet.modeling.sampling import ROI_STREAM, RPN_STREAM, balanced_sample, candidate_keys, image_keys
from tests.conftest import build_test_detector
from tests.modeling.test_detector import SMALL

SEEDS = [101, 202, 303]
SIZES = [(64, 64), (56, 64), (64, 48)]  # (height, width): padded to 64 x 64, masks on canvases of their own size


class SameDraw:
    """A torchvision sampler that draws what the batched heads draw: keys of (seed, stream, own index)."""

    def __init__(self, stream: int, size: int, fraction: float) -> None:
        self.stream, self.size, self.fraction = stream, size, fraction

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        longest = max(len(row) for row in labels)
        rows = torch.stack([F.pad(row.long(), (0, longest - len(row)), value=-1) for row in labels])
        keys = candidate_keys(image_keys(SEEDS[: len(labels)], self.stream, rows.device),
                              torch.arange(longest).expand_as(rows))  # fmt: skip
        positive, negative = balanced_sample(rows, keys, self.size, self.fraction)
        lengths = [len(row) for row in labels]
        return ([m[:n].to(torch.uint8) for m, n in zip(positive, lengths, strict=True)],
                [m[:n].to(torch.uint8) for m, n in zip(negative, lengths, strict=True)])  # fmt: skip


def _targets(arch: str) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for count, (height, width) in zip((3, 1, 2), SIZES, strict=True):
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width / 2, height / 2])
        extent = 8 + torch.rand(count, 2, generator=generator) * torch.tensor([width / 2, height / 2])
        boxes = torch.cat([corner, torch.min(corner + extent, torch.tensor([width, height]))], 1)
        boxes[0, 2:] = torch.tensor([width, height])  # one object touches the image's far edges
        masks = torch.zeros(count, height, width, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
            masks[i, y1 : (y1 + y2) // 2, x1 : (x1 + x2) // 2] = 0  # not a plain rectangle
        target = {"boxes": boxes, "labels": torch.randint(1, 4, (count,), generator=generator), "masks": masks,
                  "sample_seed": SEEDS[len(targets)]}  # fmt: skip
        if arch == "keypoint_rcnn":
            span = boxes[:, None, 2:] - boxes[:, None, :2]
            inside = boxes[:, None, :2] + torch.rand(count, 17, 2, generator=generator) * span
            target["keypoints"] = torch.cat([inside, torch.full((count, 17, 1), 2.0)], -1)  # fmt: skip
        targets.append(target)
    return targets


def _detector_and_inputs(arch: str) -> tuple[Any, Any, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    detector = build_test_detector(**{**SMALL, "arch": arch, "norm": "gn"}).train()
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in SIZES]
    image_list, targets = detector.transform(images, _targets(arch))
    return detector, image_list, detector.backbone(image_list.tensors), targets


def _close(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-7), (name, ours[name], theirs[name])


@pytest.mark.parametrize("arch", ["mask_rcnn", "keypoint_rcnn"])
def test_training_losses_are_torchvisions_given_the_same_draw(arch: str) -> None:
    detector, images, features, targets = _detector_and_inputs(arch)
    rpn, heads = detector.rpn, detector.roi_heads
    with torch.no_grad():
        proposals, rpn_losses = rpn(images, features, targets)
        roi_losses = heads(features, proposals, images.image_sizes, targets)[1]
        rpn.fg_bg_sampler = SameDraw(RPN_STREAM, rpn.fg_bg_sampler.batch_size_per_image, 0.5)
        heads.fg_bg_sampler = SameDraw(ROI_STREAM, heads.fg_bg_sampler.batch_size_per_image, 0.25)
        _close(rpn_losses, RegionProposalNetwork.forward(rpn, images, features, targets)[1])
        _close(roi_losses, RoIHeads.forward(heads, features, proposals, images.image_sizes, targets)[1])
    assert all(loss > 0 for loss in roi_losses.values())


@pytest.mark.parametrize("gpu_nms_boxes", [None, 1, 1000, 10**6])
def test_proposals_are_torchvisions(gpu_nms_boxes: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an NMS call for each image and level (the CPU: None) or for as many images as a GPU's call takes (1,
    2 and all 3 here: an image has up to 455 boxes in training), and with the boxes torchvision drops (empty after
    clipping) left in the NMS below every valid score."""
    if gpu_nms_boxes is not None:
        calls = heads.nms_calls
        monkeypatch.setattr(heads, "nms_calls", lambda images, lengths, _: calls(images, lengths, torch.device("cuda")))
        monkeypatch.setattr(heads, "GPU_NMS_BOXES", gpu_nms_boxes)
    detector, images, features, _ = _detector_and_inputs("mask_rcnn")
    rpn = detector.rpn
    anchors = sum(f.shape[-2] * f.shape[-1] * 3 for f in features.values())
    per_level = [f.shape[-2] * f.shape[-1] * 3 for f in features.values()]
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(3, anchors, 2, generator=generator) * 70 - 3
    proposals = torch.cat([corner, corner + torch.rand(3, anchors, 2, generator=generator) * 30 - 0.5], -1)
    objectness = torch.randn(3 * anchors, 1, generator=generator)
    # Boxes dropped for their score or for being small (with any score), not only empty ones, which overlap nothing.
    rpn.score_thresh, rpn.min_size = 0.3, 6.0
    for training in (True, False):
        rpn.train(training)
        ours = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        theirs = RegionProposalNetwork.filter_proposals(rpn, proposals, objectness, images.image_sizes, per_level)
        for mine, other in zip(ours, theirs, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(mine, other, strict=True))
    assert 0 < len(ours[0][0]) < anchors


@pytest.mark.parametrize("low_quality", [False, True])
def test_matching_is_torchvisions_image_by_image(low_quality: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    gt = [torch.rand(n, 2, generator=generator) * 40 for n in (4, 1, 0)]
    gt = [torch.cat([c, c + 5 + torch.rand(len(c), 2, generator=generator) * 20], 1) for c in gt]
    corner = torch.rand(500, 2, generator=generator) * 50
    boxes = torch.cat([corner, corner + 3 + torch.rand(500, 2, generator=generator) * 20], 1)
    boxes[7] = boxes[9]  # a tie for a ground truth's best box
    boxes[11] = gt[0][2] + 0.5  # a good match
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    gt_boxes, valid = padded(gt)
    ours = match(pairwise_iou(gt_boxes, boxes[None]), valid, matcher)
    for image, own in enumerate(gt):
        expected = matcher(box_iou(own, boxes)) if len(own) else torch.full((500,), BELOW_LOW)
        assert torch.equal(ours[image], expected)
    assert (ours[0] >= 0).any() and (ours[0] == -2).any()


def test_an_images_rois_do_not_depend_on_its_batch() -> None:
    detector, images, features, targets = _detector_and_inputs("mask_rcnn")
    with torch.no_grad():
        proposals, _ = detector.rpn(images, features, targets)
        proposals[1] = proposals[1][:5]  # the others' padding must not become its candidates
        together = detector.roi_heads.sample(proposals, targets)
        alone = detector.roi_heads.sample(proposals[1:2], targets[1:2])
    count = int(alone.weight.sum())
    assert count == int(together.weight[1].sum()) and 0 < count <= 5 + len(targets[1]["boxes"])
    assert torch.equal(alone.boxes[0, :count], together.boxes[1, :count])
