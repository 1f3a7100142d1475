import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.init import load_backbone_weights
from scratchdet.modeling.weights import describe_weight_file
from tests.conftest import build_test_detector

NARROW50 = {"arch": "faster_rcnn", "backbone": "resnet_narrow", "narrow_width": 8, "narrow_depth": 50,
            "num_classes": 2, "fpn_channels": 16, "gn_groups": 4, "box_head_conv_dim": 16, "box_head_fc_dim": 16,
            "test_size": 64, "max_size": 64}  # fmt: skip


def _caffe2_name(key: str, norm: str) -> str:
    """torchvision ResNet key → Detectron's Caffe2 blob name (the inverse of what scratchdet maps)."""
    parameter = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    if key == "conv1.weight":
        return "conv1_w"
    if key.startswith("bn1."):
        return ("res_conv1_bn_" if norm == "bn" else "conv1_gn_") + parameter[key.split(".")[1]]
    stage, block, rest = re.match(r"layer(\d)\.(\d+)\.(.*)", key).groups()  # type: ignore[union-attr]
    prefix = f"res{int(stage) + 1}_{block}_branch"
    table = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "downsample.0": "1",
             "bn1": "2a", "bn2": "2b", "bn3": "2c", "downsample.1": "1"}  # fmt: skip
    module, name = rest.rsplit(".", 1)
    if module.startswith("conv") or module == "downsample.0":
        return f"{prefix}{table[module]}_w"
    return f"{prefix}{table[module]}_{norm}_{parameter[name]}"


def _write_caffe2_pkl(path: Path, norm: str) -> dict[str, np.ndarray]:
    """A Detectron-style pickle (Python-2 protocol, {"blobs": ...}) of a narrow ResNet-50 body's weights."""
    source = build_test_detector(norm="gn" if norm == "gn" else "bn", **NARROW50).backbone.body
    blobs = {}
    for key, tensor in source.state_dict().items():
        if key.endswith("num_batches_tracked") or (norm == "bn" and key.endswith(("running_mean", "running_var"))):
            continue  # Caffe2 BN files hold the frozen affine only
        blobs[_caffe2_name(key, norm)] = np.random.default_rng(len(blobs)).normal(size=tensor.shape).astype(np.float32)
    blobs["fc1000_w"] = np.zeros((10, 256), np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)
    with open(path, "wb") as file:
        pickle.dump({"blobs": blobs, "model_name": "R-50-GN"}, file, protocol=2)
    return blobs


def test_caffe2_gn_pickle_loads_completely(tmp_path: Path) -> None:
    blobs = _write_caffe2_pkl(tmp_path / "R-50-GN.pkl", "gn")
    model = build_test_detector(norm="gn", **NARROW50)
    report = load_backbone_weights(model, tmp_path / "R-50-GN.pkl")
    assert report.missing == [] and report.unexpected == [] and report.ignored == ["fc.weight"]
    body = model.backbone.body
    assert np.array_equal(body.layer3[2].conv2.weight.detach().numpy(), blobs["res4_2_branch2b_w"])
    assert np.array_equal(body.layer1[0].downsample[1].weight.detach().numpy(), blobs["res2_0_branch1_gn_s"])
    assert np.array_equal(body.bn1.bias.detach().numpy(), blobs["conv1_gn_b"])


def test_caffe2_affine_bn_pickle_into_frozen_bn_is_exact(tmp_path: Path) -> None:
    blobs = _write_caffe2_pkl(tmp_path / "R-50.pkl", "bn")
    model = build_test_detector(norm="frozen_bn", stride_in_1x1=True, **NARROW50)  # a BN .pkl is MSRA's layout
    report = load_backbone_weights(model, tmp_path / "R-50.pkl")
    assert report.missing == [] and report.folded_norms > 0
    frozen = model.backbone.body.layer2[0].bn3
    x = torch.randn(1, frozen.weight.shape[0], 3, 3)
    expected = (
        x * torch.from_numpy(blobs["res3_0_branch2c_bn_s"])[None, :, None, None]
        + torch.from_numpy(blobs["res3_0_branch2c_bn_b"])[None, :, None, None]
    )
    torch.testing.assert_close(frozen(x), expected)


def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pkl", "wb") as file:
        pickle.dump({"blobs": {"conv1_w": Payload()}}, file)
    model = build_test_detector(norm="gn", **NARROW50)
    with pytest.raises(ScratchdetError, match=r"refused to load: the file asks for pathlib\.(Posix)?Path"):
        load_backbone_weights(model, tmp_path / "evil.pkl")
    assert not marker.exists()


def test_describe_weight_file(tmp_path: Path) -> None:
    _write_caffe2_pkl(tmp_path / "R-50-GN.pkl", "gn")
    text = describe_weight_file(tmp_path / "R-50-GN.pkl")
    assert "metadata: format=caffe2" in text and "conv1.weight" in text


def test_a_detectron_pkl_computes_on_scratchdets_input_what_it_computed_on_detectrons(tmp_path: Path) -> None:
    """Detectron trained on BGR 0-255 minus its pixel means; scratchdet feeds RGB [0, 1] normalised by ImageNet's
    mean and std. A .pkl written as Detectron would write the reference network must give the same features."""
    torch.manual_seed(0)
    reference = build_test_detector(norm="gn", **NARROW50).backbone.body.eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rgb = torch.rand(1, 3, 48, 64)
    ours = (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    detectron_input = rgb.flip(1) * 255 - torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    # The same network for Detectron's input: BGR channel c of conv1 reads RGB channel 2 - c, without the scaling.
    state["conv1.weight"] = (state["conv1.weight"] / (255 * std.view(1, 3, 1, 1))).flip(1)
    detectron_view = build_test_detector(norm="gn", **NARROW50).backbone.body.eval()
    detectron_view.load_state_dict(state, strict=False)
    with torch.no_grad():
        expected = reference(ours)
        assert torch.allclose(detectron_view(detectron_input)["0"], expected["0"], atol=1e-4)  # the premise
    blobs = {_caffe2_name(k, "gn"): v.numpy() for k, v in state.items()}
    with open(tmp_path / "R-50-GN.pkl", "wb") as file:
        pickle.dump({"blobs": blobs}, file, protocol=2)
    model = build_test_detector(norm="gn", **NARROW50)
    report = load_backbone_weights(model, tmp_path / "R-50-GN.pkl")
    assert report.missing == [] and report.metadata["input"].startswith("BGR 0-255 converted")
    with torch.no_grad():
        loaded = model.backbone.body.eval()(ours)
    for level in expected:
        assert torch.allclose(loaded[level], expected[level], atol=1e-4), level


def test_a_detectron_pkl_is_refused_with_a_pixel_mean_it_cannot_be_converted_to(tmp_path: Path) -> None:
    _write_caffe2_pkl(tmp_path / "R-50-GN.pkl", "gn")
    with pytest.raises(ScratchdetError, match="expects Detectron's pixel means"):
        model = build_test_detector(norm="gn", **NARROW50)
        load_backbone_weights(model, tmp_path / "R-50-GN.pkl", None, [0.5] * 3, [0.2] * 3)


def test_a_timm_gn_resnet_checkpoint_loads_as_safetensors_and_as_pth(tmp_path: Path) -> None:
    """timm's ResNets (resnet50_gn) use torchvision's layer names plus a classifier `fc`; timm publishes
    .safetensors, and training scripts save {"state_dict": ...} with DDP's "module." prefix."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = build_test_detector(norm="gn", **NARROW50).backbone.body.eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state |= {"fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)}
    save_file(state, str(tmp_path / "resnet50_gn.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "checkpoint.pth")
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = reference(image)
    for name in ("resnet50_gn.safetensors", "checkpoint.pth"):
        model = build_test_detector(norm="gn", **NARROW50)
        report = load_backbone_weights(model, tmp_path / name)
        assert report.missing == [] and report.unexpected == [] and report.ignored, name
        with torch.no_grad():
            loaded = model.backbone.body.eval()(image)
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ScratchdetError, match=r"broken\.safetensors: cannot be read"):
        load_backbone_weights(build_test_detector(norm="gn", **NARROW50), tmp_path / "broken.safetensors")


def test_a_pth_that_asks_for_code_is_refused_without_advice_to_lower_the_guard(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("this ran",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ScratchdetError) as caught:
        load_backbone_weights(build_test_detector(norm="gn", **NARROW50), tmp_path / "evil.pth")
    message = str(caught.value)
    assert "refused to load: the file asks for" in message and "print" in message
    assert "weights_only" not in message and "Only trusted weight files of tensors load" in message


def test_an_msra_pkl_loads_only_into_its_own_layout_and_then_computes_what_it_did(tmp_path: Path) -> None:
    """MSRA's BN ResNets (Detectron's R-50.pkl) stride in each stage's first 1x1 conv. Written as Detectron would
    write a reference network of that layout, the file gives the reference's features in a backbone built with
    model.stride_in_1x1; torchvision's layout is refused with the reason, and really computes something else."""
    torch.manual_seed(0)
    reference = build_test_detector(norm="frozen_bn", stride_in_1x1=True, **NARROW50).backbone.body.eval()
    assert reference.layer2[0].conv1.stride == (2, 2) and reference.layer2[0].conv2.stride == (1, 1)
    state = {}
    for key, tensor in reference.state_dict().items():
        if key.endswith("running_mean"):
            state[key] = torch.zeros_like(tensor)
        elif key.endswith("running_var"):
            state[key] = torch.full_like(tensor, 1 - 1e-5)  # what a Caffe2 frozen affine becomes
        else:
            state[key] = torch.randn_like(tensor) * (0.1 if tensor.dim() == 4 else 1.0)
    reference.load_state_dict(state)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    ours = (torch.rand(1, 3, 64, 64) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(ours)
    written = dict(state)
    written["conv1.weight"] = (state["conv1.weight"] / (255 * std.view(1, 3, 1, 1))).flip(1)  # Detectron's input
    blobs = {_caffe2_name(k, "bn"): v.numpy() for k, v in written.items() if not k.endswith(("_mean", "_var"))}
    with open(tmp_path / "R-50.pkl", "wb") as file:
        pickle.dump({"blobs": blobs}, file, protocol=2)

    model = build_test_detector(norm="frozen_bn", stride_in_1x1=True, **NARROW50)
    report = load_backbone_weights(model, tmp_path / "R-50.pkl")
    assert report.missing == [] and report.metadata["stride_in_1x1"] is True
    with torch.no_grad():
        loaded = model.backbone.body.eval()(ours)
    for level in expected:
        torch.testing.assert_close(loaded[level], expected[level], atol=1e-4, rtol=1e-4)

    torchvision_layout = build_test_detector(norm="frozen_bn", **NARROW50)
    with pytest.raises(ScratchdetError, match=r"stride_in_1x1: file True, model False .*set model.stride_in_1x1=true"):
        load_backbone_weights(torchvision_layout, tmp_path / "R-50.pkl")
    torchvision_layout.backbone.body.load_state_dict(model.backbone.body.state_dict())  # the same weights
    with torch.no_grad():
        other = torchvision_layout.backbone.body.eval()(ours)
    assert torch.allclose(other["0"], expected["0"], atol=1e-4)  # res2 has no stride to place
    assert not torch.allclose(other["3"], expected["3"], atol=1e-2)  # res5: loaded silently, it would compute this


def test_a_torchvision_layout_file_is_refused_by_an_msra_layout_backbone(tmp_path: Path) -> None:
    _write_caffe2_pkl(tmp_path / "R-50-GN.pkl", "gn")  # FAIR's GN files stride in the 3x3, as torchvision does
    with pytest.raises(ScratchdetError, match=r"stride_in_1x1: file False, model True .*set model.stride_in_1x1=false"):
        load_backbone_weights(build_test_detector(norm="gn", stride_in_1x1=True, **NARROW50), tmp_path / "R-50-GN.pkl")
    with pytest.raises(ScratchdetError, match="needs bottleneck blocks"):
        build_test_detector(norm="gn", **{**NARROW50, "narrow_depth": 18}, stride_in_1x1=True)


class _Crafted:
    """Pickles as numpy's own array reconstruction with a state of our choosing: only allowed names, put together
    the way no weight file is."""

    def __init__(self, state: object) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state)


@pytest.mark.parametrize(
    ("state", "complaint"),
    [
        ((1, (2,), np.dtype("O"), False, b"\0" * 16), r"dtype dtype\('O'\): only arrays of numbers load"),
        ((1, (10**13,), np.dtype("f8"), False, b"\0" * 8), r"declares 10,000,000,000,000 elements .* holds 8 bytes"),
        ("nonsense", r"an array's state is str, not numpy's 5-tuple"),
        ((1, (-3,), np.dtype("f4"), False, b"\0"), r"shape \(-3,\) is not a tuple of sizes"),
    ],
    ids=["object array", "10^13 elements", "bad __setstate__ argument", "negative shape"],
)
def test_a_crafted_pickle_of_allowed_names_is_refused_by_name(tmp_path: Path, state: object, complaint: str) -> None:
    path = tmp_path / "crafted.pkl"
    with open(path, "wb") as file:
        pickle.dump({"blobs": {"conv1_w": _Crafted(state)}}, file, protocol=2)
    model = build_test_detector(norm="gn", **NARROW50)
    with pytest.raises(ScratchdetError, match=rf"crafted\.pkl: refused to load: .*{complaint}"):
        load_backbone_weights(model, path)
    with pytest.raises(ScratchdetError, match="refused to load"):
        describe_weight_file(path)  # `scratchdet weights inspect`
