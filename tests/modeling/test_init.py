from pathlib import Path

import pytest
import torch
import torchvision

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.init import init_scratch, load_backbone_weights
from tests.conftest import build_test_detector

R18: dict = {
    "arch": "faster_rcnn",
    "backbone": "resnet18",
    "num_classes": 2,
    "fpn_channels": 32,
    "box_head_conv_dim": 16,
    "box_head_fc_dim": 32,
    "test_size": 64,
    "max_size": 96,
}


def _imagenet_resnet18(path: Path) -> torchvision.models.ResNet:
    """A torchvision ResNet-18 with non-trivial BN statistics, saved as an ImageNet-style state dict."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch.save(source.state_dict(), path)
    return source.eval()


def test_torchvision_state_dict_loads_into_bn_backbone(tmp_path: Path) -> None:
    source = _imagenet_resnet18(tmp_path / "r18.pth")
    model = build_test_detector(norm="bn", **R18)
    init_scratch(model)
    report = load_backbone_weights(model, tmp_path / "r18.pth")
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatches == []
    assert report.ignored == ["fc.weight", "fc.bias"]
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    expected = [k for k in source.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert sorted(report.loaded) == sorted(expected)
    assert f"{len(expected)} tensors loaded" in report.format()


def test_bn_statistics_are_folded_into_frozen_bn(tmp_path: Path) -> None:
    source = _imagenet_resnet18(tmp_path / "r18.pth")
    model = build_test_detector(norm="frozen_bn", freeze_at=2, **R18)
    init_scratch(model)
    report = load_backbone_weights(model, tmp_path / "r18.pth")
    assert report.folded_norms == 20
    frozen = model.backbone.body.bn1
    assert torch.all(frozen.running_mean == 0)
    x = torch.randn(2, 3, 64, 64)
    body = model.backbone.body.eval()
    with torch.no_grad():
        ours = body.layer4(body.layer3(body.layer2(body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(x))))))))
        theirs = source.layer4(
            source.layer3(source.layer2(source.layer1(source.maxpool(source.relu(source.bn1(source.conv1(x)))))))
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_wrong_shape_and_missing_key_are_reported_and_refused(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save({"model": state, "meta": {"epochs": 3}}, tmp_path / "broken.pth")
    model = build_test_detector(norm="bn", **R18)
    init_scratch(model)
    before = model.backbone.body.conv1.weight.clone()
    with pytest.raises(ScratchdetError) as error:
        load_backbone_weights(model, tmp_path / "broken.pth")
    message = str(error.value)
    assert "missing (left as initialized) (1): layer2.0.conv1.weight" in message
    assert "shape mismatches (1): layer1.0.conv1.weight: file (64, 64, 5, 5), model (64, 64, 3, 3)" in message
    assert torch.equal(model.backbone.body.conv1.weight, before)  # a refused file changes nothing


def test_norm_mismatch_is_refused(tmp_path: Path) -> None:
    _imagenet_resnet18(tmp_path / "r18.pth")
    model = build_test_detector(norm="gn", **R18)
    with pytest.raises(ScratchdetError, match=r"norm mismatches \(20\): bn1: file has batch-norm statistics"):
        load_backbone_weights(model, tmp_path / "r18.pth")


def test_unrelated_file_and_pickled_code_are_refused(tmp_path: Path) -> None:
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    model = build_test_detector(norm="bn", **R18)
    with pytest.raises(ScratchdetError, match="nothing in the weight file matches the backbone"):
        load_backbone_weights(model, tmp_path / "other.pth")

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ScratchdetError, match=r"refused to load: the file asks for getattr, which a weight file"):
        load_backbone_weights(model, tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ScratchdetError, match="no such file"):
        load_backbone_weights(model, tmp_path / "absent.pth")
