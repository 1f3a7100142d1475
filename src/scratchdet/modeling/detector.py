"""Mask R-CNN, Faster R-CNN and Keypoint R-CNN assembled from torchvision's components with the paper's heads.

Box head "4conv1fc": four 3x3 convs with the chosen norm, then one FC (the GN/SyncBN papers' head); "2fc": two FCs
without norm (the FrozenBN baseline). Mask head: four 3x3 convs with the norm. Keypoint head: eight 3x3 convs with
the norm (torchvision's has none), then torchvision's deconvolution + upsampling predictor of one heatmap a joint.
The RPN head has no norm. The same norm factory serves backbone, FPN, box head and mask head, so one switch changes
all of them; `head_norm` gives the FPN and heads another one (the FrozenBN baseline has none there).

Inputs are expected already normalized (the data transforms do it): the detector's own transform only pads during
training, and at test time resizes the shorter side to `test_size` and maps detections back to the input image.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import Conv2dNormActivation, MultiScaleRoIAlign

from scratchdet.config import ModelConfig
from scratchdet.modeling.backbone import build_backbone_with_fpn, build_resnet, freeze_stages
from scratchdet.modeling.init import LoadReport, init_scratch, load_backbone_weights
from scratchdet.modeling.norm import get_norm
from scratchdet.modeling.roi_align import ThreadedMultiScaleRoIAlign
from scratchdet.modeling.sampling import install_seeded_samplers
from scratchdet.modeling.weights import IMAGENET_MEAN, IMAGENET_STD

FPN_LEVELS = ["0", "1", "2", "3"]


def build_detector(
    *,
    arch: str,
    backbone: str,
    num_classes: int,
    norm: str,
    head_norm: str | None = None,
    gn_groups: int = 32,
    gn_eps: float = 1e-5,
    narrow_width: int = 32,
    narrow_depth: int = 18,
    fpn_channels: int = 256,
    freeze_at: int = 0,
    box_head: str = "4conv1fc",
    box_head_conv_dim: int = 256,
    box_head_fc_dim: int = 1024,
    mask_head_conv_dim: int = 256,
    mask_head_convs: int = 4,
    num_keypoints: int = 17,
    keypoint_head_conv_dim: int = 512,
    keypoint_head_convs: int = 8,
    rpn_conv_depth: int = 1,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    roi_canonical_scale: int = 224,
    test_size: int = 800,
    max_size: int = 1333,
    threaded_roi_align: bool = True,
    stride_in_1x1: bool = False,
    **detector_options: Any,
) -> MaskRCNN | FasterRCNN:
    """A randomly initialized detector; `num_classes` counts object categories (background is added).

    Its anchor and RoI samplers draw from each training image's `sample_seed` (see `sampling.py`).

    `detector_options` go to torchvision's `MaskRCNN`/`FasterRCNN` (RPN and RoI sampling sizes, score threshold,
    detections per image). Call `init_scratch` or `load_backbone_weights` on the result to initialize it.
    """
    if arch not in ("mask_rcnn", "faster_rcnn", "keypoint_rcnn"):
        raise ValueError(f"unknown arch {arch!r}; choose mask_rcnn, faster_rcnn or keypoint_rcnn")
    backbone_norm = get_norm(norm, gn_groups=gn_groups, gn_eps=gn_eps)
    norm_factory = get_norm(head_norm or norm, gn_groups=gn_groups, gn_eps=gn_eps)  # FPN and heads
    body = build_resnet(backbone, norm=backbone_norm, narrow_width=narrow_width, narrow_depth=narrow_depth,
                        stride_in_1x1=stride_in_1x1)  # fmt: skip
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
        raise ValueError(f"unknown box_head {box_head!r}; choose 4conv1fc or 2fc")
    common: dict[str, Any] = dict(
        num_classes=None,  # the predictors below carry it
        min_size=test_size,
        max_size=max_size,
        image_mean=[0.0, 0.0, 0.0],  # inputs arrive normalized
        image_std=[1.0, 1.0, 1.0],
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
        detector = FasterRCNN(features, **common)
    elif arch == "keypoint_rcnn":
        head_layers = [Conv2dNormActivation(fpn_channels if i == 0 else keypoint_head_conv_dim, keypoint_head_conv_dim,
                                            norm_layer=norm_factory) for i in range(keypoint_head_convs)]  # fmt: skip
        detector = KeypointRCNN(
            features,
            keypoint_roi_pool=_roi_pool(14, roi_canonical_scale, threaded_roi_align),
            keypoint_head=nn.Sequential(*head_layers),
            keypoint_predictor=KeypointRCNNPredictor(keypoint_head_conv_dim, num_keypoints),
            **common,
        )
    else:
        detector = MaskRCNN(
            features,
            mask_roi_pool=_roi_pool(14, roi_canonical_scale, threaded_roi_align),
            mask_head=MaskRCNNHeads(fpn_channels, [mask_head_conv_dim] * mask_head_convs, 1, norm_layer=norm_factory),
            mask_predictor=MaskRCNNPredictor(mask_head_conv_dim, mask_head_conv_dim, num_classes + 1),
            **common,
        )
    install_seeded_samplers(detector)
    return detector


def _roi_pool(output_size: int, canonical_scale: int, threaded: bool) -> MultiScaleRoIAlign:
    # The FPN level of a RoI is 4 + log2(sqrt(area) / canonical_scale): with small inputs the canonical scale
    # must shrink too, or every RoI lands on P2.
    pooler = ThreadedMultiScaleRoIAlign if threaded else MultiScaleRoIAlign
    return pooler(FPN_LEVELS, output_size, sampling_ratio=2, canonical_scale=canonical_scale)


def _identity(model: ModelConfig) -> dict[str, Any]:
    """The settings a backbone file must share with this model (checked against its metadata)."""
    identity: dict[str, Any] = {"backbone": model.backbone}
    if model.backbone == "resnet_narrow":
        identity.update(narrow_width=model.narrow_width, narrow_depth=model.narrow_depth)
    if model.norm == "gn":
        identity.update(norm="gn", gn_groups=model.gn_groups)
    return identity


def build_model(
    model: ModelConfig,
    *,
    num_classes: int,
    test_size: int,
    max_size: int,
    score_thresh: float = 0.05,
    detections_per_image: int = 100,
    load_init_weights: bool = True,
    num_keypoints: int = 17,
    pixel_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
    pixel_std: list[float] | tuple[float, ...] = IMAGENET_STD,
) -> tuple[MaskRCNN | FasterRCNN, LoadReport | None]:
    """The detector described by a `model` config section, initialized as `model.init` says.

    Returns the model and, when `model.init` is a weight file, the load report (its metadata carries the
    pre-training counts). `load_init_weights=False` skips the weight file (a checkpoint is loaded next).
    `pixel_mean` / `pixel_std`: the input normalisation, which a Caffe2 weight file's first layer is converted to.
    """
    detector = build_detector(
        arch=model.arch,
        backbone=model.backbone,
        num_classes=num_classes,
        norm=model.norm,
        head_norm=model.head_norm,
        gn_groups=model.gn_groups,
        gn_eps=model.gn_eps,
        narrow_width=model.narrow_width,
        narrow_depth=model.narrow_depth,
        fpn_channels=model.fpn_channels,
        freeze_at=model.freeze_at,
        box_head=model.box_head,
        box_head_conv_dim=model.box_head_conv_dim,
        box_head_fc_dim=model.box_head_fc_dim,
        mask_head_conv_dim=model.mask_head_conv_dim,
        mask_head_convs=model.mask_head_convs,
        num_keypoints=num_keypoints,
        keypoint_head_conv_dim=model.keypoint_head_conv_dim,
        keypoint_head_convs=model.keypoint_head_convs,
        rpn_conv_depth=model.rpn_conv_depth,
        anchor_sizes=tuple(model.anchor_sizes),
        anchor_aspect_ratios=tuple(model.anchor_aspect_ratios),
        roi_canonical_scale=model.roi_canonical_scale,
        test_size=test_size,
        max_size=max_size,
        threaded_roi_align=model.threaded_roi_align,
        stride_in_1x1=model.stride_in_1x1,
        rpn_pre_nms_top_n_train=model.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=model.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=model.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=model.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=model.rpn_batch_size_per_image,
        box_batch_size_per_image=model.roi_batch_size_per_image,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
    )
    init_scratch(detector, zero_init_last=model.zero_init_last)
    load = load_init_weights and model.init != "scratch"
    report = load_backbone_weights(detector, model.init, _identity(model), pixel_mean, pixel_std) if load else None
    return detector, report
