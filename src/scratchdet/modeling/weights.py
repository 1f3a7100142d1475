"""Reading weight files without ever running code from them.

* `.pth` / `.pt`: `torch.load(weights_only=True)`; a state dict, or {"model": state dict, "meta": {...}} as
  written by scratchdet (pre-training output, checkpoints).
* `.safetensors`: a tensor table that holds no code at all (timm publishes its ResNets so; timm's ResNet, e.g.
  `resnet50_gn`, names its layers as torchvision does, so its keys need no mapping).
* `.pkl`: Detectron / detectron2 Caffe2-format backbones (such as the R-50-GN file the paper used), read by an
  unpickler that builds only plain containers and numpy arrays: a file that asks for anything else (a function to
  call, a class to build) is refused before any of it runs. Caffe2 blob names are mapped to torchvision's
  (`res2_0_branch2a_w` → `layer1.0.conv1.weight`, `res2_0_branch2a_gn_s` → `layer1.0.bn1.weight`, …).
  Detectron's networks were trained on BGR images in 0–255 with its pixel means subtracted and std 1, scratchdet
  feeds RGB in [0, 1] normalised by `data.pixel_mean` / `data.pixel_std`: `caffe2_first_conv_for_rgb` rewrites the
  first convolution at load time so that the network computes on scratchdet's input exactly what it computed on
  its own (exact because ImageNet's mean x 255 is Detectron's pixel mean, so both pad with the same mean pixel).
  Detectron's BN ResNets (MSRA's R-50.pkl / R-101.pkl) stride in each stage's first 1x1 convolution: they load
  only into a backbone built so (`model.stride_in_1x1=true`); every other file only into torchvision's layout.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from scratchdet.errors import ScratchdetError

# The only globals a pickle of numpy arrays in containers needs.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store the bytes of an array
}
CAFFE2_EPS = 1e-5
CAFFE2_PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)  # Detectron's PIXEL_MEANS; its PIXEL_STD is 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the input normalisation of torchvision's weights, and scratchdet's default
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b|bn_rm|bn_riv|gn_s|gn_b)$")
_STEM = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "res_conv1_bn_rm": "bn1.running_mean",
    "res_conv1_bn_riv": "bn1.running_var",
    "conv1_gn_s": "bn1.weight",
    "conv1_gn_b": "bn1.bias",
    "fc1000_w": "fc.weight",
    "fc1000_b": "fc.bias",
}
_BRANCH = {
    "1": ("downsample.0", "downsample.1"),
    "2a": ("conv1", "bn1"),
    "2b": ("conv2", "bn2"),
    "2c": ("conv3", "bn3"),
}
_PARAMETER = {
    "bn_s": "weight",
    "gn_s": "weight",
    "bn_b": "bias",
    "gn_b": "bias",
    "bn_rm": "running_mean",
    "bn_riv": "running_var",
}


class _ArraysOnly(pickle._Unpickler):  # the pure-Python unpickler: its BUILD step can be checked (below)
    """Plain containers and numpy arrays of numbers, nothing else. An array is rebuilt in two steps (an empty array,
    then `__setstate__` with its shape, dtype and bytes); the second is checked before numpy sees it, so an array of
    Python objects, or one declaring more elements than its bytes hold (numpy would allocate them first), is
    refused instead of crashing or exhausting memory."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the file asks for {module}.{name}, which a weight file never needs")

    def load_build(self) -> None:
        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        state, target = stack[-1], stack[-2]
        if isinstance(target, np.ndarray):
            _check_array_state(state)
        elif not isinstance(target, np.dtype):  # a dtype's state is a few flags: numpy checks them itself
            raise pickle.UnpicklingError(f"the file sets the state of a {type(target).__name__}, not of an array")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch: ClassVar[dict[int, Any]] = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}


def _check_array_state(state: Any) -> None:
    """numpy's array state: (version, shape, dtype, Fortran order, raw bytes), with exactly the bytes it declares."""
    if not (isinstance(state, tuple) and len(state) == 5):
        raise pickle.UnpicklingError(f"an array's state is {type(state).__name__}, not numpy's 5-tuple")
    _, shape, dtype, _, raw = state
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"an array of dtype {dtype!r}: only arrays of numbers load (no Python objects)")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"an array's shape {shape!r} is not a tuple of sizes")
    if not isinstance(raw, bytes | str):
        raise pickle.UnpicklingError(f"an array's data is {type(raw).__name__}, not bytes")
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(raw):
        raise pickle.UnpicklingError(
            f"an array declares {math.prod(shape):,} elements ({declared:,} bytes) but holds {len(raw):,} bytes"
        )


# The pre-training cost of published backbone files, by file name, as the paper counts it (one instance per image,
# the training crop's pixels): Detectron's GN backbones are counted as the paper counts ImageNet pre-training (100
# epochs of ImageNet-1k at 224 px); torchvision's ImageNet1K_V1 ResNets were trained by its reference recipe (90
# epochs at 224 px). A study spec can give or override a file's cost (`weights: {NAME: {path, pretrain}}`).
IMAGENET_1K_IMAGES = 1_281_167
_IMAGENET_100 = {"dataset": "ImageNet-1k", "images_per_epoch": IMAGENET_1K_IMAGES, "epochs": 100, "input_size": 224}
_IMAGENET_90 = {**_IMAGENET_100, "epochs": 90}
PUBLISHED_PRETRAINING: dict[str, dict[str, Any]] = {
    "R-50-GN.pkl": _IMAGENET_100,
    "R-101-GN.pkl": _IMAGENET_100,
    # MSRA's BN ResNets in Detectron's model zoo (model.stride_in_1x1=true): the ResNet paper's 60 x 10^4
    # iterations of 256 images, about 120 epochs.
    "R-50.pkl": {**_IMAGENET_100, "epochs": 120},
    "R-101.pkl": {**_IMAGENET_100, "epochs": 120},
    "resnet50-0676ba61.pth": _IMAGENET_90,
    "resnet50-19c8e357.pth": _IMAGENET_90,
    "resnet101-63fe2227.pth": _IMAGENET_90,
    "resnet101-5d3b4d8f.pth": _IMAGENET_90,
}


def read_restricted_pickle(path: Path) -> Any:
    """Unpickle plain containers and numpy arrays only (latin-1 for Python 2 pickles, as Detectron wrote them)."""
    try:
        with open(path, "rb") as file:
            return _ArraysOnly(file, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise ScratchdetError(f"{path}: refused to load: {exc}. Only trusted weight files of arrays load") from None
    except (TypeError, AttributeError, IndexError, KeyError, MemoryError, RecursionError) as exc:
        # Allowed names put together wrongly: not a weight file anyone wrote
        raise ScratchdetError(
            f"{path}: refused to load: not a pickled weight file ({type(exc).__name__}: {exc}). "
            "Only trusted weight files of arrays load"
        ) from None
    except (OSError, EOFError, ValueError) as exc:
        raise ScratchdetError(f"{path}: cannot be read as a pickled weight file ({exc})") from None


def caffe2_to_torchvision(blobs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Caffe2 ResNet blob names → torchvision ResNet keys; unknown names are kept as they are (reported later).

    Caffe2 "BN" files hold a frozen affine (scale, bias) only: they get mean 0 and variance 1 - eps, so a frozen
    or folded batch norm reproduces exactly `scale * x + bias`.
    """
    converted: dict[str, torch.Tensor] = {}
    batch_norms: set[str] = set()  # torchvision prefixes of norms that were BN (not GN) in the file
    for name, array in blobs.items():
        if name.endswith("_momentum"):
            continue  # optimizer state, not a weight
        tensor = torch.as_tensor(np.asarray(array))
        match = _BLOCK.match(name)
        if name in _STEM:
            key = _STEM[name]
        elif match:
            stage, block, branch, kind = match.groups()
            conv, norm = _BRANCH[branch]
            key = f"layer{int(stage) - 1}.{block}." + (
                f"{conv}.weight" if kind == "w" else f"{norm}.{_PARAMETER[kind]}"
            )
        else:
            key = name
        converted[key] = tensor
        if "_bn_" in name:
            batch_norms.add(key.rsplit(".", 1)[0])
    for prefix in batch_norms:
        if f"{prefix}.running_mean" not in converted:
            converted[f"{prefix}.running_mean"] = torch.zeros_like(converted[f"{prefix}.weight"])
            converted[f"{prefix}.running_var"] = torch.full_like(converted[f"{prefix}.weight"], 1.0 - CAFFE2_EPS)
    return converted


def caffe2_first_conv_for_rgb(
    weight: torch.Tensor, pixel_mean: list[float] | tuple[float, ...], pixel_std: list[float] | tuple[float, ...]
) -> torch.Tensor:
    """A Caffe2 first convolution (its input BGR, 0–255, Detectron's means subtracted) rewritten for RGB input in
    [0, 1] normalised by `pixel_mean` / `pixel_std`: channel order reversed, each channel scaled by 255 x std.

    With x = (rgb - mean) / std, Detectron's input is 255 x std x x + (255 x mean - its mean) per channel; the
    second term is 0 for ImageNet's mean (which is Detectron's / 255), and only then is the rewrite exact.
    """
    expected = [m / 255 for m in reversed(CAFFE2_PIXEL_MEAN_BGR)]
    if any(abs(a - b) > 1e-4 for a, b in zip(pixel_mean, expected, strict=True)):
        raise ScratchdetError(
            f"a Detectron .pkl backbone expects Detectron's pixel means; data.pixel_mean {list(pixel_mean)} differs "
            f"from {[round(e, 5) for e in expected]} (ImageNet's), so its first layer cannot be converted exactly; "
            "use the ImageNet mean with this file"
        )
    scale = torch.tensor([255.0 * s for s in pixel_std], dtype=weight.dtype).view(1, 3, 1, 1)
    return weight.flip(1) * scale


def read_weight_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of a weight file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ScratchdetError(f"model.init={path}: no such file; give 'scratch' or the path of a weight file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu")), {"format": "safetensors", "stride_in_1x1": False}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ScratchdetError(f"{path}: cannot be read as a .safetensors weight file ({exc})") from None
    if path.suffix == ".pkl":
        content = read_restricted_pickle(path)
        blobs = content.get("blobs", content) if isinstance(content, dict) else None
        if not isinstance(blobs, dict) or not all(isinstance(v, np.ndarray) for v in blobs.values()):
            raise ScratchdetError(f"{path}: expected a dict of arrays (Caffe2 blobs), found {type(content).__name__}")
        # Detectron's Caffe2 BN ResNets (MSRA's R-50.pkl / R-101.pkl, a frozen affine per norm) stride in the 1x1;
        # its GN ResNets (FAIR's R-50-GN.pkl / R-101-GN.pkl) in the 3x3, as torchvision does.
        msra = any("_bn_" in name for name in blobs)
        return caffe2_to_torchvision(blobs), {"format": "caffe2", "stride_in_1x1": msra}
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # asks for code or objects: refused, and it must stay refused
        wanted = re.search(r"GLOBAL (\S+)", str(exc))
        asked = f"asks for {wanted.group(1)}, " if wanted else "holds objects other than tensors, "
        raise ScratchdetError(
            f"{path}: refused to load: the file {asked}which a weight file never needs. Only trusted weight files "
            "of tensors load; save the state dict alone (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as exc:  # corrupt or truncated
        raise ScratchdetError(f"{path}: cannot be read as a weight file ({exc})") from None
    metadata: dict[str, Any] = {}
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        metadata = content.get("meta") or {}
        content = content["model"]
    elif isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ScratchdetError(f"{path}: expected a state dict (names → tensors), found {type(content).__name__}")
    return content, {"stride_in_1x1": False, **metadata}  # torchvision's layout, unless the file says otherwise


def describe_weight_file(path: Path, limit: int = 20) -> str:
    """What a weight file holds: format, metadata, tensor count, and the first names with their shapes."""
    state, metadata = read_weight_file(Path(path))
    parameters = sum(t.numel() for t in state.values())
    lines = [f"{path}: {len(state)} tensors, {parameters:,} values"]
    if metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))
    for name, tensor in list(state.items())[:limit]:
        lines.append(f"  {name:<40s} {tuple(tensor.shape)}")
    if len(state) > limit:
        lines.append(f"  ... ({len(state) - limit} more)")
    return "\n".join(lines)
