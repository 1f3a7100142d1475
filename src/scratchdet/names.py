"""The names a config may choose among — norms, backbones, architectures, box heads — defined once: the config
validates against these types and the builders below it list the same names in their errors."""

from __future__ import annotations

from typing import Literal, get_args

NormName = Literal["frozen_bn", "bn", "syncbn", "gn", "none"]
BackboneName = Literal[
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext101_32x8d", "resnet_narrow"
]
ArchName = Literal["mask_rcnn", "faster_rcnn", "keypoint_rcnn"]
BoxHeadName = Literal["4conv1fc", "2fc"]

NORMS: tuple[str, ...] = get_args(NormName)
BACKBONES: tuple[str, ...] = get_args(BackboneName)
ARCHS: tuple[str, ...] = get_args(ArchName)
BOX_HEADS: tuple[str, ...] = get_args(BoxHeadName)
