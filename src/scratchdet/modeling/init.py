"""Initialization: random ("from scratch", with the conventions of Detectron) or a backbone weight file.

`init_scratch` sets every parameter explicitly, so what "from scratch" means is written here, not inherited from
constructors: He/MSRA normal (fan_out) for backbone, box-head and mask-head convs; Xavier-style
`kaiming_uniform_(a=1)` for FPN convs and box-head FCs; RPN convs N(0, 0.01); predictors N(0, 0.01) for class
scores and N(0, 0.001) for box deltas and mask logits; every norm weight 1 and bias 0. `zero_init_last` zeroes the
last norm of each residual block (off by default: detectron2 keeps it off for GN from scratch).

`load_backbone_weights` reads a torchvision ImageNet ResNet state dict or a scratchdet backbone checkpoint (never
executing code from the file) into the detector's backbone and says what it loaded, missed and could not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.backbone import stride_in_1x1
from scratchdet.modeling.norm import NORM_TYPES
from scratchdet.modeling.weights import IMAGENET_MEAN, IMAGENET_STD, caffe2_first_conv_for_rgb, read_weight_file

IGNORED_PREFIXES = ("fc.",)  # an ImageNet classifier has no place in a detector
STRIPPED_PREFIXES = ("module.", "backbone.body.", "body.", "backbone.")


def _msra(module: Any) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    _zero_bias(module)


def _xavier(module: Any) -> None:
    nn.init.kaiming_uniform_(module.weight, a=1)
    _zero_bias(module)


def _normal(module: Any, std: float) -> None:
    nn.init.normal_(module.weight, std=std)
    _zero_bias(module)


def _zero_bias(module: Any) -> None:
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def _init_each(root: nn.Module | None, conv: Any, linear: Any = None) -> None:
    if root is None:
        return
    for module in root.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            conv(module)
        elif isinstance(module, nn.Linear) and linear is not None:
            linear(module)


def _optional(model: nn.Module, name: str) -> Any:
    """A submodule by dotted name, or None (Faster R-CNN has no mask head)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _reset_norms(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, NORM_TYPES):  # affine-free norms have weight None
            for name, value in (("weight", 1.0), ("bias", 0.0)):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    tensor.fill_(value)


@torch.no_grad()
def init_backbone(body: nn.Module, zero_init_last: bool = False) -> None:
    """He/MSRA normal (fan_out) convs, norms at weight 1 and bias 0, optionally zero last norm per block."""
    _init_each(body, _msra)
    _reset_norms(body)
    if zero_init_last:
        for block in body.modules():
            last: Any = (
                block.bn2 if isinstance(block, BasicBlock) else block.bn3 if isinstance(block, Bottleneck) else None
            )
            if last is not None and getattr(last, "weight", None) is not None:
                last.weight.zero_()


@torch.no_grad()
def init_scratch(model: nn.Module, zero_init_last: bool = False) -> None:
    """Random initialization of a detector built by `build_detector` (see the module docstring)."""
    _init_each(model.get_submodule("backbone.fpn"), _xavier)
    _init_each(model.get_submodule("rpn.head"), lambda m: _normal(m, 0.01))
    _init_each(model.get_submodule("roi_heads.box_head"), _msra, _xavier)
    box_predictor: Any = model.get_submodule("roi_heads.box_predictor")
    _normal(box_predictor.cls_score, 0.01)
    _normal(box_predictor.bbox_pred, 0.001)
    _init_each(_optional(model, "roi_heads.mask_head"), _msra)
    _init_each(_optional(model, "roi_heads.keypoint_head"), _msra)
    keypoint_predictor = _optional(model, "roi_heads.keypoint_predictor")
    if keypoint_predictor is not None:
        _msra(keypoint_predictor.kps_score_lowres)
    mask_predictor = _optional(model, "roi_heads.mask_predictor")
    if mask_predictor is not None:
        _msra(mask_predictor.conv5_mask)
        _normal(mask_predictor.mask_fcn_logits, 0.001)
    _reset_norms(model)
    init_backbone(model.get_submodule("backbone.body"), zero_init_last)


# ------------------------------------------------------------------------------------------ weight files


@dataclass
class LoadReport:
    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    norm_mismatches: list[str] = field(default_factory=list)
    setting_mismatches: list[str] = field(default_factory=list)
    folded_norms: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def format(self, limit: int = 12) -> str:
        def listing(title: str, items: list[str]) -> str:
            shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
            return f"\n  {title} ({len(items)}): {shown}" if items else ""

        text = f"backbone weights from {self.path}: {len(self.loaded)} tensors loaded"
        if self.folded_norms:
            text += f", {self.folded_norms} batch norms folded into frozen affines"
        text += listing("missing (left as initialized)", self.missing)
        text += listing("unexpected (not used)", self.unexpected)
        text += listing("ignored (classifier)", self.ignored)
        text += listing("shape mismatches", self.shape_mismatches)
        text += listing("norm mismatches", self.norm_mismatches)
        text += listing("settings that differ from the file's metadata", self.setting_mismatches)
        return text


def _strip(key: str) -> str:
    for prefix in STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return _strip(key[len(prefix) :])
    return key


def _norm_kinds(body: nn.Module) -> dict[str, type[nn.Module]]:
    return {name: type(m) for name, m in body.named_modules() if isinstance(m, NORM_TYPES)}


def _fold_batch_norm(source: dict[str, torch.Tensor], prefix: str, eps: float) -> dict[str, torch.Tensor]:
    """BN (weight, bias, running mean, running var) → the same affine as a FrozenBN with mean 0 and var 1-eps."""
    scale = source[f"{prefix}.weight"] * torch.rsqrt(source[f"{prefix}.running_var"] + eps)
    return {
        f"{prefix}.weight": scale,
        f"{prefix}.bias": source[f"{prefix}.bias"] - source[f"{prefix}.running_mean"] * scale,
        f"{prefix}.running_mean": torch.zeros_like(scale),
        f"{prefix}.running_var": torch.full_like(scale, 1.0 - eps),
    }


def _check_norm_kinds(report: LoadReport, source: dict[str, torch.Tensor], kinds: dict[str, type[nn.Module]]) -> None:
    for prefix, kind in kinds.items():
        has_statistics = f"{prefix}.running_mean" in source
        if f"{prefix}.weight" not in source:
            continue
        if kind is nn.GroupNorm and has_statistics:
            report.norm_mismatches.append(f"{prefix}: file has batch-norm statistics, model uses GroupNorm")
        elif kind is not nn.GroupNorm and not has_statistics:
            report.norm_mismatches.append(f"{prefix}: file has no batch-norm statistics, model uses {kind.__name__}")


@torch.no_grad()
def load_backbone_weights(
    model: nn.Module,
    path: Path | str,
    expected: dict[str, Any] | None = None,
    pixel_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
    pixel_std: list[float] | tuple[float, ...] = IMAGENET_STD,
) -> LoadReport:
    """Load a backbone weight file into `model.backbone.body`; raise when nothing matches or anything conflicts.

    `expected` settings (e.g. {"gn_groups": 32}) are compared with the file's metadata where it records them:
    some differences (GN group count) change no tensor shape and would otherwise pass unnoticed. `pixel_mean` /
    `pixel_std` are the input normalisation (`data.pixel_mean` / `data.pixel_std`): a Caffe2 file's first
    convolution is rewritten for it (see `caffe2_first_conv_for_rgb`).
    """
    raw, metadata = read_weight_file(Path(path))
    if metadata.get("format") == "caffe2" and "conv1.weight" in raw:
        raw["conv1.weight"] = caffe2_first_conv_for_rgb(raw["conv1.weight"], pixel_mean, pixel_std)
        metadata["input"] = "BGR 0-255 converted to RGB normalised at load time"
    report = LoadReport(Path(path), metadata=metadata)
    for key, value in (expected or {}).items():
        if key in metadata and metadata[key] != value:
            report.setting_mismatches.append(f"{key}: file {metadata[key]!r}, config {value!r}")
    body: Any = model.get_submodule("backbone.body")
    layout = stride_in_1x1(body)
    if metadata.get("stride_in_1x1", False) != layout:
        report.setting_mismatches.append(
            f"stride_in_1x1: file {metadata.get('stride_in_1x1', False)}, model {layout} — "
            + (
                "the file strides in each stage's first 1x1 conv (MSRA's layout, as Detectron's BN R-50.pkl / "
                "R-101.pkl): set model.stride_in_1x1=true (in a study, for every arm, so that they stay matched)"
                if not layout
                else "the file strides in the 3x3 (torchvision's layout): set model.stride_in_1x1=false"
            )
        )
    source: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = _strip(key)
        if name.startswith(IGNORED_PREFIXES):
            report.ignored.append(key)
        elif not name.endswith("num_batches_tracked"):
            source[name] = tensor
    kinds = _norm_kinds(body)
    _check_norm_kinds(report, source, kinds)
    for prefix, kind in kinds.items():
        if kind is FrozenBatchNorm2d and f"{prefix}.running_var" in source:
            source.update(_fold_batch_norm(source, prefix, body.get_submodule(prefix).eps))
            report.folded_norms += 1
    # A BN step counter carries no weight; it is neither loaded nor reported.
    target = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    for name, tensor in target.items():
        if name not in source:
            report.missing.append(name)
        elif source[name].shape != tensor.shape:
            report.shape_mismatches.append(f"{name}: file {tuple(source[name].shape)}, model {tuple(tensor.shape)}")
        else:
            report.loaded.append(name)
    report.unexpected = [name for name in source if name not in target]
    if report.shape_mismatches or report.norm_mismatches or report.setting_mismatches:
        raise ScratchdetError(
            "the weight file does not fit this backbone (another depth, width, norm or stride layout?); "
            f"use a file made for model.backbone / model.norm as configured\n{report.format()}"
        )
    if not report.loaded:
        raise ScratchdetError(f"nothing in the weight file matches the backbone\n{report.format()}")
    for name in report.loaded:  # only once everything is known to fit: a refused file changes nothing
        target[name].copy_(source[name])
    return report
