"""ResNet / ResNeXt bodies with an FPN (P2–P6), every norm from one factory, and stage freezing.

The standard depths come from torchvision's builders (`weights=None`: nothing is ever downloaded). The narrow
ResNet for CPU work keeps torchvision's block classes and module names (`conv1`, `bn1`, `layer1`…`layer4`), so a
checkpoint of one maps onto the other key for key; only the stage widths differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.norm import NormFactory, norm_or_identity

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # res1 (stem) … res5, as freeze_at counts them
TORCHVISION_RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
    "resnext101_32x8d": torchvision.models.resnext101_32x8d,
}
NARROW_LAYOUTS: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    10: (BasicBlock, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
}


class NarrowResNet(nn.Module):
    """A ResNet whose res2 has `width` channels (torchvision's has 64), doubling per stage.

    Input (N, 3, H, W); `forward` returns classification logits (N, num_classes) when `num_classes` > 0,
    else the res5 features (N, C5, H/32, W/32).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        width: int,
        norm: NormFactory,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], 1, norm)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2, norm)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2, norm)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2, norm)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes) if num_classes else nn.Identity()

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int, norm: NormFactory
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                norm(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, norm_layer=norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if isinstance(self.fc, nn.Identity):
            return x
        return self.fc(self.avgpool(x).flatten(1))


def build_resnet(
    name: str,
    *,
    norm: NormFactory | None,
    narrow_width: int = 32,
    narrow_depth: int = 18,
    num_classes: int = 0,
    stride_in_1x1: bool = False,
) -> nn.Module:
    """A ResNet body by name ("resnet50", …, or "resnet_narrow"), randomly initialized, with `norm` everywhere.

    `stride_in_1x1`: each stage's first bottleneck strides in its first 1x1 convolution (MSRA's original layout,
    kept by Detectron's BN R-50.pkl / R-101.pkl) instead of its 3x3 (torchvision's, and FAIR's GN files'). The
    weights have the same shapes either way; the function they compute does not.
    """
    factory = norm_or_identity(norm)
    if name == "resnet_narrow":
        if narrow_depth not in NARROW_LAYOUTS:
            raise ScratchdetError(f"narrow_depth={narrow_depth}; choose one of {sorted(NARROW_LAYOUTS)}")
        block, layers = NARROW_LAYOUTS[narrow_depth]
        model: nn.Module = NarrowResNet(block, layers, narrow_width, factory, num_classes)
    elif name in TORCHVISION_RESNETS:
        model = TORCHVISION_RESNETS[name](weights=None, norm_layer=factory, num_classes=max(num_classes, 1))
        if not num_classes:
            model.fc = nn.Identity()
    else:
        raise ScratchdetError(
            f"unknown backbone {name!r}; choose one of {', '.join([*TORCHVISION_RESNETS, 'resnet_narrow'])}"
        )
    if stride_in_1x1:
        _move_strides_to_1x1(model, name)
    return model


def _move_strides_to_1x1(body: nn.Module, name: str) -> None:
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        first = body.get_submodule(f"{stage}.0")
        if not isinstance(first, Bottleneck):
            raise ScratchdetError(
                f"model.stride_in_1x1=true needs bottleneck blocks (ResNet-50 and deeper); {name} has basic blocks"
            )
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)


def stride_in_1x1(body: nn.Module) -> bool:
    """Whether a ResNet body built here strides in its bottlenecks' first 1x1 convolution (see `build_resnet`)."""
    first = body.get_submodule("layer2.0")
    return isinstance(first, Bottleneck) and first.conv1.stride != (1, 1)


def res5_features(body: nn.Module, images: Tensor) -> Tensor:
    """(N, 3, H, W) → res5 features (N, C5, H/32, W/32) of any ResNet body built here (fc and pooling unused)."""
    x = body.get_submodule("maxpool")(
        body.get_submodule("relu")(body.get_submodule("bn1")(body.get_submodule("conv1")(images)))
    )
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        x = body.get_submodule(stage)(x)
    return x


def stage_channels(body: nn.Module) -> list[int]:
    """Output channels of layer1…layer4."""
    channels = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        convs = [m for m in getattr(body, stage).modules() if isinstance(m, nn.Conv2d)]
        channels.append(convs[-1].out_channels)
    return channels


def stage_modules(body: nn.Module, stage: str) -> list[nn.Module]:
    names = ["conv1", "bn1"] if stage == "stem" else [stage]
    return [body.get_submodule(name) for name in names]


def _freeze_norms(module: nn.Module) -> nn.Module:
    """BatchNorm layers become FrozenBatchNorm2d (a frozen stage must not update statistics either)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _freeze_norms(child))
    return module


def freeze_stages(body: nn.Module, freeze_at: int) -> None:
    """Freeze the first `freeze_at` stages (1: stem, 2: stem + res2, … 5: everything); 0 freezes nothing."""
    for stage in STAGES[:freeze_at]:
        for module in stage_modules(body, stage):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if stage == "stem":
            body.bn1 = _freeze_norms(body.get_submodule("bn1"))
        else:
            setattr(body, stage, _freeze_norms(getattr(body, stage)))


def build_backbone_with_fpn(body: nn.Module, *, fpn_channels: int, fpn_norm: NormFactory | None) -> BackboneWithFPN:
    """FPN over res2–res5 ("0"–"3" = P2–P5) plus P6 by max-pooling P5 ("pool"), for the RPN."""
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stage_channels(body),
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=fpn_norm,
    )
