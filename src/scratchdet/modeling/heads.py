"""torchvision's RPN and RoI heads with training done for the whole batch at once.

torchvision matches anchors and proposals to the ground truth, samples them and builds the mask targets image by
image in Python; each image costs dozens of operations and, on a GPU, host waits (`torch.where`, boolean masks,
`randperm` on the CPU then a copy). Here the ground truth is padded to the batch's largest count and matching,
sampling (`sampling.py`), regression targets, losses and mask targets are computed for all images with one
operation each. The RoI heads read the sampled counts once (one host wait) to pool exactly the sampled RoIs, so the
box and mask heads see what torchvision's see: no padding RoIs (which would change a BatchNorm head's statistics).
The losses are torchvision's (same normalisations); only the order of floating-point sums and the random draw differ.
Proposal filtering (top-n, clipping, NMS) gives torchvision's proposals without waiting to drop boxes, with NMS calls
sized for the device (`nms_calls`), in training and inference; the rest of inference is torchvision's, unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, keypointrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import nms, roi_align

from scratchdet.modeling.sampling import ROI_STREAM, RPN_STREAM, balanced_sample, candidate_keys, image_keys

BELOW_LOW = -1  # torchvision's Matcher codes
BETWEEN = -2
GPU_NMS_BOXES = 8192  # boxes of one NMS call on a GPU: a 8192 x 8192 overlap bitmask is 8 MiB


class BatchedRPN(RegionProposalNetwork):
    """torchvision's RPN; in training, anchors are matched and sampled and the losses computed for the batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The anchors of one image by (padded batch size, feature sizes, dtype, device): not state, not saved.
        self._anchors: dict[tuple[Any, ...], Tensor] = {}

    @classmethod
    def like(cls, rpn: RegionProposalNetwork) -> BatchedRPN:
        """A BatchedRPN with `rpn`'s modules and settings (the same parameters, the same state-dict keys)."""
        matcher, sampler = rpn.proposal_matcher, rpn.fg_bg_sampler
        return cls(
            rpn.anchor_generator, rpn.head, matcher.high_threshold, matcher.low_threshold,
            sampler.batch_size_per_image, sampler.positive_fraction, rpn._pre_nms_top_n, rpn._post_nms_top_n,
            rpn.nms_thresh, rpn.score_thresh,
        )  # fmt: skip

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        if not self.training:
            return super().forward(images, features, targets)
        if targets is None:
            raise ValueError("training needs targets")
        levels = list(features.values())
        objectness, deltas = self.head(levels)
        anchors, count = self.image_anchors(images, levels), len(images.image_sizes)
        anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        # torchvision's `decode` of the anchors of each image, concatenated
        proposals = self.box_coder.decode_single(deltas.detach(), anchors.repeat(count, 1)).view(count, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, anchors_per_level)
        losses = self.batch_losses(objectness.view(count, -1), deltas.view(count, -1, 4), anchors, targets)
        return boxes, losses

    def image_anchors(self, images: ImageList, levels: list[Tensor]) -> Tensor:
        """The anchors (A, 4) of every image of the batch: they tile the padded batch, so all images have the same
        ones. torchvision's generator makes them anew for each image of each batch (about 8 operations a level and
        one an image); here once per padded size and feature sizes."""
        key = (tuple(images.tensors.shape[-2:]), tuple(tuple(level.shape[-2:]) for level in levels),
               levels[0].dtype, levels[0].device)  # fmt: skip
        if key not in self._anchors:
            first = ImageList(images.tensors[:1], images.image_sizes[:1])
            self._anchors[key] = self.anchor_generator(first, [level[:1] for level in levels])[0]
        return self._anchors[key]

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's proposal filtering (top-n a level, clip, drop small and low-scoring boxes, NMS a level,
        top-n after NMS) for the batch, with one host wait for the counts and one an NMS call."""
        num_images, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), level, device=device) for level, n in enumerate(num_anchors_per_level)])
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        scores = torch.sigmoid(torch.gather(objectness, 1, top))
        boxes = torch.gather(proposals, 1, top[..., None].expand(-1, -1, 4))
        sizes = torch.tensor([[w, h, w, h] for h, w in image_shapes], dtype=boxes.dtype)
        boxes = torch.min(boxes.clamp(min=0), sizes.to(device, non_blocking=True)[:, None])
        width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid = (width >= self.min_size) & (height >= self.min_size) & (scores >= self.score_thresh)
        # Boxes torchvision drops stay in, scored below every valid box: NMS visits boxes by falling score, and a
        # box suppresses only those after it, so they change nothing, and no host wait is needed to drop them.
        ranked = torch.where(valid, scores.to(torch.float64), -1.0)
        # Each (image, level) shifted apart so that no two groups overlap: in float64, so that the shift costs no
        # precision (torchvision shifts in float32).
        group = torch.arange(num_images, device=device)[:, None] * len(num_anchors_per_level) + levels[top]
        shifted = boxes.to(torch.float64) + group[..., None] * (float(max(max(shape) for shape in image_shapes)) + 1)
        flat_boxes, flat_scores, flat_ranked = boxes.flatten(0, 1), scores.flatten(), ranked.flatten()
        lengths = [min(self.pre_nms_top_n(), n) for n in num_anchors_per_level]  # each level's part of `top`
        survivors = torch.cat([
            start + nms(shifted.flatten(0, 1)[start:end], flat_ranked[start:end], self.nms_thresh)
            for start, end in nms_calls(num_images, lengths, device)
        ])  # fmt: skip
        # Each image's valid survivors by falling score, then the dropped ones (ranked -1); stable sorts keep NMS's
        # order where scores tie.
        survivors = survivors[torch.sort(flat_ranked[survivors], descending=True, stable=True).indices]
        owner = torch.div(survivors, top.shape[1], rounding_mode="floor")
        kept = valid.flatten()[survivors]
        ordered = survivors[torch.sort(owner, stable=True).indices]
        per_image = torch.zeros(2, num_images, dtype=owner.dtype, device=device)
        per_image.scatter_add_(1, owner.expand(2, -1), torch.stack([torch.ones_like(owner), kept.to(owner.dtype)]))
        totals, counts = per_image.tolist()  # no bincount: on a GPU it reads its input's maximum first
        # Each image's first min(count, post-NMS top-n) survivors, gathered at once (not an index an image).
        kept_counts = [min(count, self.post_nms_top_n()) for count in counts]
        chosen = ordered[_ranges(list(itertools.accumulate([0, *totals[:-1]])), kept_counts, device)]
        return list(flat_boxes[chosen].split(kept_counts)), list(flat_scores[chosen].split(kept_counts))

    def batch_losses(
        self, objectness: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """torchvision's objectness and box losses, for `objectness` (B, A) and `deltas` (B, A, 4)."""
        gt_boxes, gt_valid = padded([t["boxes"] for t in targets])
        matches = match(pairwise_iou(gt_boxes, anchors[None]), gt_valid, self.proposal_matcher)
        labels = torch.where(matches == BETWEEN, -1, (matches >= 0).to(torch.int64))
        index = torch.arange(anchors.shape[0], device=anchors.device).expand_as(labels)
        keys = candidate_keys(image_keys(_seeds(targets), RPN_STREAM, anchors.device), index)
        sampler = self.fg_bg_sampler
        positive, negative = balanced_sample(labels, keys, sampler.batch_size_per_image, sampler.positive_fraction)
        # Anchors that are not positive regress onto themselves: finite targets, masked out of the loss.
        matched = torch.where(positive[..., None], gathered(gt_boxes, matches), anchors)
        regression = self.box_coder.encode_single(matched.flatten(0, 1), anchors.repeat(len(targets), 1))
        sampled = positive | negative
        count = sampled.sum().clamp(min=1)
        box_loss = F.smooth_l1_loss(deltas.flatten(0, 1), regression, beta=1 / 9, reduction="none").sum(1)
        labels_01 = positive.to(objectness.dtype)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness, labels_01, reduction="none")
        return {
            "loss_objectness": torch.where(sampled, objectness_loss, 0).sum() / count,
            "loss_rpn_box_reg": torch.where(positive.flatten(), box_loss, 0).sum() / count,
        }


class BatchedRoIHeads(RoIHeads):
    """torchvision's RoI heads; in training, proposals are matched and sampled, and box and mask targets built,
    for the batch."""

    @classmethod
    def like(cls, heads: RoIHeads) -> BatchedRoIHeads:
        """BatchedRoIHeads with `heads`' modules and settings (the same parameters, the same state-dict keys)."""
        matcher, sampler = heads.proposal_matcher, heads.fg_bg_sampler
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor, matcher.high_threshold, matcher.low_threshold,
            sampler.batch_size_per_image, sampler.positive_fraction, heads.box_coder.weights, heads.score_thresh,
            heads.nms_thresh, heads.detections_per_img, heads.mask_roi_pool, heads.mask_head, heads.mask_predictor,
            heads.keypoint_roi_pool, heads.keypoint_head, heads.keypoint_predictor,
        )  # fmt: skip

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        self.check_targets(targets)
        assert targets is not None
        rois = self.sample(proposals, targets)
        # Each slot's FPN level in each pooler, and how many of the RoIs a pooler pools fall on each level: read
        # with the sample's counts, so that the poolers need not wait to split their RoIs by level.
        positive_pool = self.mask_roi_pool if self.has_mask() else self.keypoint_roi_pool
        box_levels = self.box_roi_pool.levels_of(features, rois.boxes, image_shapes)
        positive_levels = positive_pool.levels_of(features, rois.boxes, image_shapes) if positive_pool else box_levels
        sampled, positives, box_sizes, positive_sizes = _read([
            rois.weight.sum(1), rois.positive.sum(1), _per_level(box_levels, rois.weight, self.box_roi_pool),
            _per_level(positive_levels, rois.positive, positive_pool or self.box_roi_pool),
        ])  # fmt: skip
        box_split = (_first(box_levels, sampled), box_sizes)
        pooled = self.box_roi_pool(features, _rows(rois.boxes, sampled), image_shapes, box_split)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        losses = box_losses(class_logits, box_regression, _first(rois.labels, sampled), _first(rois.targets, sampled))
        positive_boxes = _rows(rois.boxes, positives)
        positive_split = (_first(positive_levels, positives), positive_sizes)
        if self.has_mask():
            assert self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None
            pooled = self.mask_roi_pool(features, positive_boxes, image_shapes, positive_split)
            mask_logits = self.mask_predictor(self.mask_head(pooled))
            image = torch.arange(len(targets), device=mask_logits.device)[:, None].expand_as(rois.matched)
            masks = mask_targets(targets, _first(rois.boxes, positives), _first(image, positives),
                                 _first(rois.matched, positives), mask_logits.shape[-1])  # fmt: skip
            losses["loss_mask"] = mask_loss(mask_logits, _first(rois.labels, positives), masks)
        if self.has_keypoint():
            assert self.keypoint_roi_pool is not None and self.keypoint_head is not None
            assert self.keypoint_predictor is not None
            pooled = self.keypoint_roi_pool(features, positive_boxes, image_shapes, positive_split)
            keypoint_logits = self.keypoint_predictor(self.keypoint_head(pooled))
            keypoints = [t["keypoints"] for t in targets]
            losses["loss_keypoint"] = keypointrcnn_loss(keypoint_logits, positive_boxes, keypoints,
                                                        _rows(rois.matched, positives))  # fmt: skip
        return [], losses

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> SampledRoIs:
        """Match the proposals and the ground truth (added as proposals, as torchvision does) to the ground truth,
        sample them and order each image's row: positives, then negatives, then what was not sampled."""
        gt_boxes, gt_valid = padded([t["boxes"] for t in targets])
        gt_labels, _ = padded([t["labels"] for t in targets])
        candidates, proposal_valid = padded(proposals)
        lengths = proposal_valid.sum(1, keepdim=True)
        boxes = torch.cat([candidates, gt_boxes.to(candidates.dtype)], 1)
        valid = torch.cat([proposal_valid, gt_valid], 1)
        # An image's own numbering (its proposals, then its ground truth): the draw does not depend on the batch.
        own = torch.arange(candidates.shape[1], device=boxes.device).expand_as(proposal_valid)
        index = torch.cat([own, lengths + torch.arange(gt_boxes.shape[1], device=boxes.device)], 1)
        matches = match(pairwise_iou(gt_boxes, boxes), gt_valid, self.proposal_matcher)
        labels = torch.gather(gt_labels, 1, matches.clamp(min=0))
        labels = torch.where(matches == BELOW_LOW, 0, torch.where(matches == BETWEEN, -1, labels))
        labels = torch.where(valid, labels, -1)
        keys = candidate_keys(image_keys(_seeds(targets), ROI_STREAM, boxes.device), index)
        sampler = self.fg_bg_sampler
        positive, negative = balanced_sample(labels, keys, sampler.batch_size_per_image, sampler.positive_fraction)
        rank = torch.where(positive, index, torch.where(negative, index + boxes.shape[1], index + 2 * boxes.shape[1]))
        slots = rank.topk(min(sampler.batch_size_per_image, boxes.shape[1]), dim=1, largest=False).indices
        slot_boxes = torch.gather(boxes, 1, slots[..., None].expand(-1, -1, 4))
        slot_matches = torch.gather(matches, 1, slots).clamp(min=0)
        slot_positive = torch.gather(positive, 1, slots)
        matched = torch.where(slot_positive[..., None], gathered(gt_boxes, slot_matches), slot_boxes)
        regression = self.box_coder.encode_single(matched.flatten(0, 1), slot_boxes.flatten(0, 1))
        return SampledRoIs(
            boxes=slot_boxes,
            labels=torch.where(slot_positive, torch.gather(labels, 1, slots), 0),
            matched=slot_matches,
            targets=regression.view_as(slot_boxes),
            positive=slot_positive,
            weight=torch.gather(positive | negative, 1, slots),
        )


class SampledRoIs:
    """Per image (B, S, ...): the sampled RoIs first (positives, then negatives), then unsampled slots."""

    def __init__(self, **fields: Tensor) -> None:
        self.boxes, self.labels, self.matched = fields["boxes"], fields["labels"], fields["matched"]
        self.targets, self.positive, self.weight = fields["targets"], fields["positive"], fields["weight"]


def box_losses(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """torchvision's `fastrcnn_loss` without the host wait of its `torch.where`."""
    positive = labels > 0
    per_class = box_regression.reshape(labels.shape[0], -1, 4)
    chosen = per_class[torch.arange(labels.shape[0], device=labels.device), labels]
    box_loss = F.smooth_l1_loss(chosen, regression_targets, beta=1 / 9, reduction="none").sum(1)
    return {
        "loss_classifier": F.cross_entropy(class_logits, labels),
        "loss_box_reg": torch.where(positive, box_loss, 0).sum() / max(labels.shape[0], 1),
    }


def mask_targets(targets: list[dict[str, Tensor]], boxes: Tensor, image: Tensor, matched: Tensor, size: int) -> Tensor:
    """Each positive RoI's ground-truth mask cropped to the RoI and resized to `size` x `size`, as torchvision's
    `project_masks_on_boxes` does, with one `roi_align` over the batch's masks on a common canvas. `boxes` (K, 4) of
    images `image` (K,) matched ground truth `matched` (K,)."""
    masks = [t["masks"] for t in targets]
    counts = [m.shape[0] for m in masks]
    most = max(max(counts), 1)
    height, width = max(m.shape[-2] for m in masks), max(m.shape[-1] for m in masks)
    canvas = boxes.new_zeros(len(masks) * most, height + 1, width + 1)
    by_size: dict[tuple[int, int], list[int]] = {}
    for b, own in enumerate(masks):
        if own.shape[0]:
            by_size.setdefault((own.shape[-2], own.shape[-1]), []).append(b)
    for (h, w), members in by_size.items():  # the masks of all images of one size at once
        group = torch.cat([masks[b] for b in members]).to(canvas.dtype)[:, None]
        # Repeat the last row and column once: roi_align then samples the border as it does on the mask alone
        # (it clamps there), not half-way into the padding; then zeros to the canvas's size.
        edged = F.pad(F.pad(group, (0, 1, 0, 1), mode="replicate"), (0, width - w, 0, height - h))
        canvas.index_copy_(0, _slots([counts[b] for b in members], most, canvas.device, members), edged[:, 0])
    rois = torch.cat([(image * most + matched).to(boxes.dtype)[:, None], boxes], 1)
    return roi_align(canvas[:, None], rois, (size, size), 1.0)[:, 0]


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """torchvision's `maskrcnn_loss` given the targets."""
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    chosen = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets)


def nms_calls(num_images: int, level_lengths: list[int], device: torch.device) -> list[tuple[int, int]]:
    """The (start, end) ranges of a batch's candidate boxes (image-major, each image's levels in turn) that go to
    one NMS call each. A call compares every pair of its boxes, shifted apart or not, so its work grows with the
    square of its boxes: on the CPU, where calls cost nothing more, one call an image and level (torchvision's
    choice for small images); on a GPU, where each call makes the host wait once, as many images as fit in
    `GPU_NMS_BOXES` boxes."""
    per_image = sum(level_lengths)
    if device.type == "cpu":
        starts = list(itertools.accumulate([0, *level_lengths[:-1]]))
        return [(b * per_image + s, b * per_image + s + n) for b in range(num_images)
                for s, n in zip(starts, level_lengths, strict=True)]  # fmt: skip
    per_call = max(1, GPU_NMS_BOXES // max(per_image, 1))
    return [(b * per_image, min(b + per_call, num_images) * per_image) for b in range(0, num_images, per_call)]


def _rows(rows: Tensor, counts: list[int]) -> list[Tensor]:
    """The first `counts[b]` entries of each row b of `rows` (B, S, ...)."""
    return list(_first(rows, counts).split(counts))


def _first(rows: Tensor, counts: list[int]) -> Tensor:
    """The first `counts[b]` entries of each row b of `rows` (B, S, ...), concatenated: one gather whatever B (a
    slice an image and a concatenation would dispatch B + 1 operations)."""
    return rows.flatten(0, 1).index_select(0, _slots(counts, rows.shape[1], rows.device))


def _slots(counts: Sequence[int], width: int, device: torch.device, rows: Sequence[int] | None = None) -> Tensor:
    """The flat positions b * width + j, j < counts[i], of the first entries of rows b = `rows[i]` (default: 0, 1,
    ...)."""
    rows = range(len(counts)) if rows is None else rows
    return _ranges([b * width for b in rows], counts, device)


def _ranges(starts: Sequence[int], counts: Sequence[int], device: torch.device) -> Tensor:
    """start, start + 1, ..., start + count - 1 for each (start, count), concatenated: computed on the host with
    numpy (a few vectorised operations whatever the length, none of them torch's) and copied once (on a GPU without
    waiting)."""
    lengths = np.asarray(counts, dtype=np.int64)
    shift = np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths)  # each range's start less its offset
    position = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(shift, lengths)
    return torch.from_numpy(position).to(device, non_blocking=True)


def _per_level(levels: Tensor, include: Tensor, pool: Any) -> Tensor:
    """How many of the slots `include` (B, S) marks fall on each of `pool`'s levels; `levels` (B, S)."""
    counts = torch.zeros(len(pool.featmap_names), dtype=torch.int64, device=levels.device)
    return counts.scatter_add_(0, levels.flatten(), include.flatten().to(torch.int64))


def _read(counts: list[Tensor]) -> list[list[int]]:
    """The integer tensors `counts`, read to the host with one copy (one wait on a GPU)."""
    flat = torch.cat(counts).tolist()
    starts = [0, *itertools.accumulate(len(c) for c in counts)]
    return [flat[start:end] for start, end in itertools.pairwise(starts)]


def padded(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """`tensors` (one an image, first dimension of any length) zero-padded to (B, N_max, ...), at least one entry
    long, and a mask (B, N_max) of the entries that are real: one concatenation and one scatter whatever B."""
    lengths = [t.shape[0] for t in tensors]
    longest = max(max(lengths), 1)
    first = tensors[0]
    stacked = first.new_zeros(len(tensors) * longest, *first.shape[1:])
    stacked.index_copy_(0, _slots(lengths, longest, first.device), torch.cat(list(tensors)))
    valid = torch.arange(longest)[None] < torch.tensor(lengths)[:, None]
    return stacked.view(len(tensors), longest, *first.shape[1:]), valid.to(first.device, non_blocking=True)


def pairwise_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """IoU (B, G, N) of ground truth (B, G, 4) and boxes (B or 1, N, 4), as torchvision's `box_iou` computes it."""
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.max(gt[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.min(gt[:, :, None, 2:], boxes[:, None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    return inter / (area_gt[:, :, None] + area[:, None, :] - inter)


def match(iou: Tensor, gt_valid: Tensor, matcher: Any) -> Tensor:
    """torchvision's `Matcher` for a batch: iou (B, G, N) -> (B, N) the matched ground truth, or BELOW_LOW /
    BETWEEN; padding ground truth (`gt_valid` False) never matches. An image without ground truth: all BELOW_LOW."""
    iou = torch.where(gt_valid[..., None], iou, -1.0)
    best, matches = iou.max(dim=1)
    below = best < matcher.low_threshold
    between = (best >= matcher.low_threshold) & (best < matcher.high_threshold)
    thresholded = torch.where(below, BELOW_LOW, torch.where(between, BETWEEN, matches))
    if not matcher.allow_low_quality_matches:
        return thresholded
    # Each ground truth's best candidates (ties included) keep their match whatever its quality.
    best_of_gt = iou.max(dim=2, keepdim=True).values
    restored = ((iou == best_of_gt) & gt_valid[..., None]).any(dim=1)
    return torch.where(restored, matches, thresholded)


def gathered(gt_boxes: Tensor, matches: Tensor) -> Tensor:
    """The ground-truth box (B, N, 4) each candidate matched (index clamped at 0, as torchvision does)."""
    return torch.gather(gt_boxes, 1, matches.clamp(min=0)[..., None].expand(-1, -1, 4))


def use_batched_heads(detector: GeneralizedRCNN) -> None:
    """Swap in the batched RPN and RoI heads (the same modules and parameters)."""
    detector.rpn = BatchedRPN.like(detector.rpn)
    detector.roi_heads = BatchedRoIHeads.like(detector.roi_heads)


def _seeds(targets: list[dict[str, Any]]) -> list[int | None]:
    """Each image's sample seed (`sampling.py`): the training batches give every image one."""
    return [t.get("sample_seed") for t in targets]
