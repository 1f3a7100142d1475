import math
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from scratchdet.modeling.init import init_scratch
from scratchdet.modeling.norm import NORM_TYPES, SyncBatchNorm
from tests.conftest import build_test_detector

SMALL: dict[str, Any] = {
    "arch": "mask_rcnn",
    "backbone": "resnet_narrow",
    "num_classes": 3,
    "narrow_width": 16,
    "narrow_depth": 10,
    "fpn_channels": 32,
    "gn_groups": 8,
    "box_head_conv_dim": 32,
    "box_head_fc_dim": 64,
    "mask_head_conv_dim": 32,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "roi_canonical_scale": 32,
    "test_size": 64,
    "max_size": 96,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
}
EXPECTED_NORM = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "syncbn": SyncBatchNorm, "gn": nn.GroupNorm}
COMPONENTS = ("backbone.body", "backbone.fpn", "roi_heads.box_head", "roi_heads.mask_head")


def _targets(count: int, size: int = 64) -> list[dict[str, torch.Tensor]]:
    targets = []
    for i in range(count):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:30, 10:40] = 1
        masks[1, 30 + i : 60, 20:50] = 1
        boxes = torch.tensor([[10.0, 8, 40, 30], [20.0, 30 + i, 50, 60]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return targets


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "syncbn", "gn", "none"])
def test_one_norm_type_everywhere(norm: str) -> None:
    model = build_test_detector(norm=norm, **SMALL)
    found = {type(m) for m in model.modules() if isinstance(m, NORM_TYPES)}
    if norm == "none":
        assert found == set()
        return
    assert found == {EXPECTED_NORM[norm]}
    for component in COMPONENTS:
        assert any(type(m) is EXPECTED_NORM[norm] for m in model.get_submodule(component).modules()), component
    assert not any(isinstance(m, NORM_TYPES) for m in model.rpn.modules())  # the RPN head has no norm


def test_2fc_box_head_has_no_norm() -> None:
    model = build_test_detector(norm="gn", **{**SMALL, "box_head": "2fc"})
    assert not any(isinstance(m, NORM_TYPES) for m in model.roi_heads.box_head.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.roi_heads.mask_head.modules())


def test_r50_fpn_bn_matches_torchvision_v2_parameter_count() -> None:
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    ours = build_test_detector(
        arch="mask_rcnn", backbone="resnet50", num_classes=90, norm="bn", rpn_conv_depth=2, box_head="4conv1fc"
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(reference)
    # Ours also holds its input normalisation's 6 constants (not saved): the network's buffers are compared.
    buffers = lambda m: sum(b.numel() for n, b in m.named_buffers() if not n.startswith("transform."))  # noqa: E731
    assert buffers(ours) == buffers(reference)


def test_gn_losses_finite_and_gradients_reach_exactly_the_trainable_parameters() -> None:
    torch.manual_seed(0)
    model = build_test_detector(norm="gn", freeze_at=2, **SMALL)
    init_scratch(model)
    model.train()
    losses = model([torch.randn(3, 64, 64), torch.randn(3, 64, 64)], _targets(2))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    optimizer.step()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(
        n.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")) for n in frozen
    )
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name


@pytest.mark.parametrize("zero_init_last", [False, True])
def test_scratch_init_follows_msra_and_detectron_conventions(zero_init_last: bool) -> None:
    torch.manual_seed(0)
    wide_heads = {"box_head_fc_dim": 1024, "mask_head_conv_dim": 256}  # enough weights to estimate a std
    model = build_test_detector(norm="gn", **{**SMALL, "narrow_width": 32, "narrow_depth": 18, **wide_heads})
    init_scratch(model, zero_init_last=zero_init_last)
    for name, module in model.backbone.body.named_modules():
        if isinstance(module, nn.Conv2d):
            expected = math.sqrt(2.0 / (module.out_channels * module.kernel_size[0] * module.kernel_size[1]))
            assert abs(module.weight.std().item() / expected - 1) < 0.10, name
    predictor = model.roi_heads.box_predictor
    assert abs(predictor.cls_score.weight.std().item() / 0.01 - 1) < 0.1
    assert abs(predictor.bbox_pred.weight.std().item() / 0.001 - 1) < 0.1
    assert abs(model.roi_heads.mask_predictor.mask_fcn_logits.weight.std().item() / 0.001 - 1) < 0.1
    fc = model.roi_heads.box_head[-1][0] if isinstance(model.roi_heads.box_head[-1], nn.Sequential) else None
    linear = (
        fc
        if isinstance(fc, nn.Linear)
        else next(m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear))
    )
    bound = math.sqrt(3.0 / linear.in_features)  # kaiming_uniform_(a=1): U(-sqrt(3/fan_in), +)
    assert linear.weight.abs().max().item() <= bound and linear.weight.abs().max().item() > 0.9 * bound
    last_norms = [b.bn2 for b in model.backbone.body.modules() if isinstance(b, torchvision.models.resnet.BasicBlock)]
    first_norms = [b.bn1 for b in model.backbone.body.modules() if isinstance(b, torchvision.models.resnet.BasicBlock)]
    assert all(bool((n.weight == (0.0 if zero_init_last else 1.0)).all()) for n in last_norms)
    assert all(bool((n.weight == 1.0).all()) and bool((n.bias == 0.0).all()) for n in first_norms)


def test_narrow_layers_use_a_divisor_group_count() -> None:
    from scratchdet.modeling.norm import group_count, group_norm

    assert group_count(256, 32) == 32
    assert group_count(24, 32) == 24
    assert group_count(48, 32) == 24
    assert group_norm(48).num_groups == 24


def test_the_detector_normalises_8_bit_images_as_the_data_pipeline_did_with_constants_it_holds() -> None:
    from torchvision.transforms import v2

    from scratchdet.engine.op_count import count_ops

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    detector = build_test_detector(**SMALL, pixel_mean=mean, pixel_std=std)
    generator = torch.Generator().manual_seed(0)
    sizes = [(64, 48), (48, 64), (64, 48)]
    images = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in sizes]
    batch, _ = detector.transform(images)  # training mode: normalised and padded, not resized
    before = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])  # the old data pipeline
    assert batch.image_sizes == sizes and batch.tensors.shape == (3, 3, 64, 64)
    for image, (h, w), padded in zip(images, sizes, batch.tensors, strict=True):
        assert torch.equal(padded[:, :h, :w], before(image))  # to the last bit
        assert not padded[:, h:].any() and not padded[:, :, w:].any()  # zeros around it, as torchvision pads
    ops = count_ops(lambda: detector.transform(images)).ops
    # No mean and std made an image (torchvision's: two constants an image); one index an image size.
    assert ops["aten.lift_fresh.default"] == len(set(sizes)) and ops["aten.div_.Tensor"] == len(set(sizes))
    assert "pixel_mean" not in detector.state_dict()  # checkpoints hold what they held before


def test_the_training_forward_is_torchvisions_with_one_check_of_the_boxes_for_the_batch() -> None:
    torch.manual_seed(0)
    model = build_test_detector(norm="gn", **SMALL).train()
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(3)]
    targets = [{**t, "sample_seed": i} for i, t in enumerate(_targets(3))]
    ours = model(images, targets)
    theirs = torchvision.models.detection.generalized_rcnn.GeneralizedRCNN.forward(model, images, targets)
    assert list(ours) == list(theirs)  # the same losses in the same order (the log's and the sum's)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    targets[2]["boxes"] = torch.tensor([[10.0, 8, 40, 30], [20.0, 30, 20, 60]])  # zero width
    with pytest.raises(ValueError, match=r"invalid box \[20.0, 30.0, 20.0, 60.0\] for target at index 2"):
        model(images, targets)
