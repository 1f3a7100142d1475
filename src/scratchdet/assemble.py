"""The edge where a config becomes a detector and a schedule: `model.*` settings become the plain arguments of
`modeling.detector.build_detector` (and the result is initialized as `model.init` says), `solver.*` those of
`engine.schedule.build_schedule`. Others read single `model.*` settings for their own purpose (the evaluation's
tasks from `model.arch`, pre-training's norm from `model.norm`, a study's arm names), never to build a model.

Training, evaluation, prediction, `scratchdet model summary`, `scratchdet weights inspect` and a study's check of
its weight files all build their detector here, so a setting added to `ModelConfig` is wired in once.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import FasterRCNN, MaskRCNN

from scratchdet.config import Config, ModelConfig
from scratchdet.data.coco import read_coco_json
from scratchdet.engine.schedule import Schedule, build_schedule
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.init import LoadReport, init_scratch, load_backbone_weights


def detector_from_config(
    config: Config, num_classes: int, *, num_keypoints: int = 17, load_init_weights: bool = True
) -> tuple[MaskRCNN | FasterRCNN, LoadReport | None]:
    """The detector `config` describes, initialized as `model.init` says; `num_classes` counts object categories.

    Returns the model and, when `model.init` is a weight file, the load report (its metadata carries the
    pre-training counts). `load_init_weights=False` skips the weight file (a checkpoint is loaded next). A Caffe2
    weight file's first layer is converted to `data.pixel_mean` / `pixel_std`, the input normalisation.
    """
    model, data = config.model, config.data
    detector = build_detector(
        **detector_arguments(model),
        num_classes=num_classes,
        num_keypoints=num_keypoints,
        test_size=data.test_size,
        max_size=data.max_size,
        pixel_mean=data.pixel_mean,
        pixel_std=data.pixel_std,
        box_score_thresh=config.eval.score_thresh,
        box_detections_per_img=config.eval.detections_per_image,
    )
    init_scratch(detector, zero_init_last=model.zero_init_last)
    if not load_init_weights or model.init == "scratch":
        return detector, None
    return detector, load_backbone_weights(
        detector, model.init, backbone_identity(model), data.pixel_mean, data.pixel_std
    )


def detector_arguments(model: ModelConfig) -> dict[str, Any]:
    """`build_detector`'s architecture arguments from a `model` section (its names, where they differ)."""
    names = (
        "arch",
        "backbone",
        "norm",
        "head_norm",
        "gn_groups",
        "gn_eps",
        "narrow_width",
        "narrow_depth",
        "fpn_channels",
        "freeze_at",
        "box_head",
        "box_head_conv_dim",
        "box_head_fc_dim",
        "mask_head_conv_dim",
        "mask_head_convs",
        "keypoint_head_conv_dim",
        "keypoint_head_convs",
        "rpn_conv_depth",
        "roi_canonical_scale",
        "threaded_roi_align",
        "stride_in_1x1",
        "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test",
        "rpn_batch_size_per_image",
    )
    return {
        **{name: getattr(model, name) for name in names},
        "anchor_sizes": tuple(model.anchor_sizes),
        "anchor_aspect_ratios": tuple(model.anchor_aspect_ratios),
        "box_batch_size_per_image": model.roi_batch_size_per_image,
    }


def backbone_identity(model: ModelConfig) -> dict[str, Any]:
    """The settings a backbone file must share with this model (checked against its metadata)."""
    identity: dict[str, Any] = {"backbone": model.backbone}
    if model.backbone == "resnet_narrow":
        identity.update(narrow_width=model.narrow_width, narrow_depth=model.narrow_depth)
    if model.norm == "gn":
        identity.update(norm="gn", gn_groups=model.gn_groups)
    return identity


def category_count(config: Config) -> int | None:
    """Object categories of `config`: `model.num_classes`, else the training annotations'; None when neither is
    known (the file is not there)."""
    if config.model.num_classes:
        return config.model.num_classes
    path = config.data.path(config.data.train_annotations)
    return len(read_coco_json(path)["categories"]) if path.is_file() else None


def schedule_for(config: Config, dataset_size: int | None) -> Schedule:
    """The schedule of `config`'s solver; `dataset_size` (images) is needed where 1x is counted in epochs."""
    solver = config.solver
    return build_schedule(
        multiplier=solver.schedule_multiplier,
        images_per_batch=solver.images_per_batch,
        base_lr=solver.base_lr,
        warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor,
        base_epochs=solver.base_epochs,
        dataset_size=dataset_size,
    )
