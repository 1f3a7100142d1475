"""Mask R-CNN, Faster R-CNN and Keypoint R-CNN assembled from torchvision's components with the paper's heads.

Box head "4conv1fc": four 3x3 convs with the chosen norm, then one FC (the GN/SyncBN papers' head); "2fc": two FCs
without norm (the FrozenBN baseline). Mask head: four 3x3 convs with the norm. Keypoint head: eight 3x3 convs with
the norm (torchvision's has none), then torchvision's deconvolution + upsampling predictor of one heatmap a joint.
The RPN head has no norm. The same norm factory serves backbone, FPN, box head and mask head, so one switch changes
all of them; `head_norm` gives the FPN and heads another one (the FrozenBN baseline has none there).

Inputs are 8-bit RGB images (float ones in [0, 1] also do), resized for training by the data pipeline: the
detector's own transform normalises them on its device by `pixel_mean` / `pixel_std`, pads them during training, and
at test time resizes the shorter side to `test_size` and maps detections back to the input image.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import Conv2dNormActivation

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.backbone import build_backbone_with_fpn, build_resnet, freeze_stages
from scratchdet.modeling.heads import use_batched_heads
from scratchdet.modeling.norm import get_norm
from scratchdet.modeling.roi_align import SeparableMultiScaleRoIAlign
from scratchdet.names import ARCHS, BOX_HEADS

FPN_LEVELS = ["0", "1", "2", "3"]


def build_detector(
    *,
    arch: str,
    backbone: str,
    num_classes: int,
    norm: str,
    head_norm: str | None,
    gn_groups: int,
    gn_eps: float,
    narrow_width: int,
    narrow_depth: int,
    fpn_channels: int,
    freeze_at: int,
    box_head: str,
    box_head_conv_dim: int,
    box_head_fc_dim: int,
    mask_head_conv_dim: int,
    mask_head_convs: int,
    num_keypoints: int,
    keypoint_head_conv_dim: int,
    keypoint_head_convs: int,
    rpn_conv_depth: int,
    anchor_sizes: tuple[int, ...],
    anchor_aspect_ratios: tuple[float, ...],
    roi_canonical_scale: int,
    test_size: int,
    max_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    threaded_roi_align: bool,
    stride_in_1x1: bool,
    **detector_options: Any,
) -> MaskRCNN | FasterRCNN:
    """A randomly initialized detector; `num_classes` counts object categories (background is added). Every
    setting is given: their defaults live in the config alone (`assemble.detector_arguments` reads them from there).

    Its RPN and RoI heads train on the whole batch at once (`heads.py`) and draw their anchor and RoI samples
    from each training image's `sample_seed` (`sampling.py`).

    `detector_options` go to torchvision's `MaskRCNN`/`FasterRCNN` (RPN and RoI sampling sizes, score threshold,
    detections per image). Call `init_scratch` or `load_backbone_weights` on the result to initialize it.
    """
    if arch not in ARCHS:
        raise ScratchdetError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    backbone_norm = get_norm(norm, gn_groups=gn_groups, gn_eps=gn_eps)
    norm_factory = get_norm(head_norm or norm, gn_groups=gn_groups, gn_eps=gn_eps)  # FPN and heads
    body = build_resnet(
        backbone, norm=backbone_norm, narrow_width=narrow_width, narrow_depth=narrow_depth, stride_in_1x1=stride_in_1x1
    )
    freeze_stages(body, freeze_at)
    features = build_backbone_with_fpn(body, fpn_channels=fpn_channels, fpn_norm=norm_factory)
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in anchor_sizes), aspect_ratios=(tuple(anchor_aspect_ratios),) * len(anchor_sizes)
    )
    if box_head == "4conv1fc":
        head: nn.Module = FastRCNNConvFCHead(
            (fpn_channels, 7, 7), [box_head_conv_dim] * 4, [box_head_fc_dim], norm_layer=norm_factory
        )
    elif box_head == "2fc":
        head = TwoMLPHead(fpn_channels * 7 * 7, box_head_fc_dim)
    else:
        raise ScratchdetError(f"unknown box_head {box_head!r}; choose one of {', '.join(BOX_HEADS)}")
    common: dict[str, Any] = dict(
        num_classes=None,  # the predictors below carry it
        min_size=test_size,
        max_size=max_size,
        image_mean=list(pixel_mean),
        image_std=list(pixel_std),
        _skip_resize=True,  # training images arrive resized (and counted) by the data pipeline
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0], conv_depth=rpn_conv_depth),
        box_roi_pool=_roi_pool(7, roi_canonical_scale, threaded_roi_align),
        box_head=head,
        box_predictor=FastRCNNPredictor(box_head_fc_dim, num_classes + 1),
        **detector_options,
    )
    detector: MaskRCNN | FasterRCNN
    if arch == "faster_rcnn":
        detector = BatchedFasterRCNN(features, **common)
    elif arch == "keypoint_rcnn":
        head_layers = [
            Conv2dNormActivation(
                fpn_channels if i == 0 else keypoint_head_conv_dim, keypoint_head_conv_dim, norm_layer=norm_factory
            )
            for i in range(keypoint_head_convs)
        ]
        detector = BatchedKeypointRCNN(
            features,
            keypoint_roi_pool=_roi_pool(14, roi_canonical_scale, threaded_roi_align),
            keypoint_head=nn.Sequential(*head_layers),
            keypoint_predictor=KeypointRCNNPredictor(keypoint_head_conv_dim, num_keypoints),
            **common,
        )
    else:
        detector = BatchedMaskRCNN(
            features,
            mask_roi_pool=_roi_pool(14, roi_canonical_scale, threaded_roi_align),
            mask_head=MaskRCNNHeads(fpn_channels, [mask_head_conv_dim] * mask_head_convs, 1, norm_layer=norm_factory),
            mask_predictor=MaskRCNNPredictor(mask_head_conv_dim, mask_head_conv_dim, num_classes + 1),
            **common,
        )
    own = detector.transform
    detector.transform = InputTransform(
        own.min_size, own.max_size, own.image_mean, own.image_std, own.size_divisible, own.fixed_size,
        _skip_resize=own._skip_resize,
    )  # fmt: skip
    use_batched_heads(detector)
    return detector


class _BatchedTraining(GeneralizedRCNN):
    """torchvision's detector, whose training forward checks the boxes once for the batch (torchvision reads a
    number an image, a host wait each on a GPU) and feeds the batched heads (`heads.py`). Inference is
    torchvision's."""

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if not self.training:
            return super().forward(images, targets)
        if targets is None:
            raise ValueError("a detector in training mode needs targets (a dict of boxes, labels, ... an image)")
        image_list, targets = self.transform(images, targets)
        assert targets is not None
        check_boxes(targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        _, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        return {**detector_losses, **proposal_losses}  # torchvision's order


class BatchedMaskRCNN(_BatchedTraining, MaskRCNN):
    """torchvision's `MaskRCNN`, trained a batch at a time."""


class BatchedFasterRCNN(_BatchedTraining, FasterRCNN):
    """torchvision's `FasterRCNN`, trained a batch at a time."""


class BatchedKeypointRCNN(_BatchedTraining, KeypointRCNN):
    """torchvision's `KeypointRCNN`, trained a batch at a time."""


def check_boxes(targets: list[dict[str, Tensor]]) -> None:
    """Every box (N, 4) of every image has positive width and height (torchvision's check, one wait a batch)."""
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {index}: boxes must be a tensor of shape (N, 4), not {tuple(boxes.shape)}")
    boxes = torch.cat([t["boxes"] for t in targets])
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(1)
    if degenerate.any():  # the one wait
        first = int(degenerate.nonzero()[0])
        index = bisect.bisect_right(list(itertools.accumulate(len(t["boxes"]) for t in targets)), first)
        box = boxes[first].tolist()
        raise ValueError(
            f"All bounding boxes should have positive height and width. Found invalid box {box} for target at "
            f"index {index}."
        )


class InputTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform, normalising with constants it holds: torchvision's makes its mean and
    std tensors on the device for every image (on a GPU, two waits an image). An 8-bit image is scaled to [0, 1]
    first. The operations are those of torchvision.transforms.v2's `ToDtype(scale=True)` and `Normalize`, so the
    numbers are the same as when the data pipeline normalised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Buffers move with the model; not persistent, so checkpoints hold what they always held.
        self.register_buffer("pixel_mean", torch.tensor(self.image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.image_std).view(-1, 1, 1), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            image = image.to(torch.float32).mul_(1.0 / 255)
        return image.sub(self.pixel_mean).div_(self.pixel_std)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """In training, where the data pipeline has resized the images: torchvision's result (each image normalised,
        then zero-padded into one batch) with a fixed number of operations per image size, not a few per image."""
        if not (self.training and self._skip_resize) or any(image.dim() != 3 for image in images):
            return super().forward(images, targets)
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        stride = float(self.size_divisible)
        height = int(math.ceil(max(h for h, _ in sizes) / stride) * stride)
        width = int(math.ceil(max(w for _, w in sizes) / stride) * stride)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            by_size.setdefault(size, []).append(index)
        first = images[0]
        dtype = first.dtype if first.is_floating_point() else torch.float32
        batch = torch.zeros(len(images), first.shape[0], height, width, dtype=dtype, device=first.device)
        for (h, w), members in by_size.items():
            normalised = self.normalize(torch.stack([images[i] for i in members]))
            where = torch.tensor(members, dtype=torch.int64).to(first.device, non_blocking=True)
            batch[:, :, :h, :w].index_copy_(0, where, normalised)
        return ImageList(batch, sizes), targets


def _roi_pool(output_size: int, canonical_scale: int, threaded: bool) -> SeparableMultiScaleRoIAlign:
    # The FPN level of a RoI is 4 + log2(sqrt(area) / canonical_scale): with small inputs the canonical scale
    # must shrink too, or every RoI lands on P2.
    return SeparableMultiScaleRoIAlign(
        FPN_LEVELS, output_size, sampling_ratio=2, canonical_scale=canonical_scale, separable=threaded
    )
