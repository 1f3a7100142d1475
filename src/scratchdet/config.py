"""Typed, validated configuration: one pydantic model per concern, YAML presets, dotted overrides.

A config is read from a YAML file or a packaged preset (``demo/mask_rcnn``), merged over its ``_base_`` files,
patched with ``key.sub=value`` overrides, and validated. Every mistake becomes a `ScratchdetError` that names the
key, the value given and what is allowed. A whole `Config` is taken apart at a few edges (`assemble.py` for the
model and schedule, `engine/detection.py` and `engine/pretrain.py` for a run, the CLI and the study planner);
the builders and the training loop below them receive plain arguments.
"""

from __future__ import annotations

import copy
import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scratchdet.errors import ScratchdetError
from scratchdet.names import ArchName, BackboneName, BoxHeadName, NormName

_SCHEDULE_PATTERN = re.compile(r"^(\d+(\.\d+)?)x$")


def _under(root: str, relative: str) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else Path(root) / path


class _Section(BaseModel):
    # Unknown keys are errors (a misspelt key must never be silently ignored); assignments are re-validated.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the COCO-format data lives and how training images are sampled and transformed."""

    root: str = Field("data/demo", description="folder that relative paths below are resolved against")
    train_annotations: str = "annotations/instances_train.json"
    train_images: str = "train"
    val_annotations: str = "annotations/instances_val.json"
    val_images: str = "val"
    train_subset: int | None = Field(None, gt=0, description="train on this many images (nested subsets)")
    subset_seed: int = 0
    keep_empty_images: bool = Field(False, description="keep training images that have no usable annotation")
    skip_bad_items: bool = Field(False, description="drop images/annotations that `data check` reports as errors")
    min_size: list[int] = Field([800], min_length=1, description="training shorter side, random choice per image")
    max_size: int = Field(1333, gt=0, description="cap on the longer side after resizing")
    test_size: int = Field(800, gt=0, description="shorter side at evaluation")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    group_by_aspect_ratio: bool = True
    num_workers: int = Field(2, ge=0)
    pixel_mean: list[float] = Field([0.485, 0.456, 0.406], min_length=3, max_length=3)
    pixel_std: list[float] = Field([0.229, 0.224, 0.225], min_length=3, max_length=3)

    @field_validator("min_size")
    @classmethod
    def _sizes_positive(cls, sizes: list[int]) -> list[int]:
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every size must be a positive number of pixels, got {sizes}")
        return sizes

    def path(self, relative: str) -> Path:
        """A data path resolved against `root` (absolute paths are kept)."""
        return _under(self.root, relative)


class ModelConfig(_Section):
    """The detector: backbone, normalization, heads, initialization."""

    arch: ArchName = "mask_rcnn"
    backbone: BackboneName = "resnet50"
    narrow_width: int = Field(32, gt=0, description="resnet_narrow: channels of res2 (then x2 per stage)")
    narrow_depth: Literal[10, 18, 34, 50] = 18
    fpn_channels: int = Field(256, gt=0)
    norm: NormName = "gn"
    head_norm: NormName | None = Field(None, description="norm of the FPN and heads; None: model.norm")
    gn_groups: int = Field(32, gt=0)
    gn_eps: float = Field(1e-5, gt=0)
    freeze_at: int = Field(0, ge=0, le=5, description="0 freezes nothing; 2 freezes stem + res2")
    threaded_roi_align: bool = Field(
        True,
        description="CPU: RoIAlign as gathers and matrix products on every core (modeling/roi_align.py), not "
        "torchvision's single-threaded scalar kernels (the same samples; sums grouped differently)",
    )
    init: str = Field("scratch", description="'scratch' or the path of a backbone checkpoint / weight file")
    allow_frozen_bn_scratch: bool = Field(False, description="permit init=scratch with norm=frozen_bn")
    zero_init_last: bool = Field(False, description="zero the last norm of each residual block")
    stride_in_1x1: bool = Field(
        False,
        description="bottlenecks stride in their first 1x1 conv (MSRA's layout, as in Detectron's BN R-50.pkl / "
        "R-101.pkl), not the 3x3 (torchvision's); a weight file is refused in the other layout",
    )
    num_classes: int | None = Field(None, gt=0, description="object categories; None: from the dataset")
    box_head: BoxHeadName = "4conv1fc"
    box_head_conv_dim: int = Field(256, gt=0)
    box_head_fc_dim: int = Field(1024, gt=0)
    mask_head_conv_dim: int = Field(256, gt=0)
    mask_head_convs: int = Field(4, ge=1)
    keypoint_head_conv_dim: int = Field(512, gt=0)
    keypoint_head_convs: int = Field(8, ge=1, description="keypoint_rcnn: 3x3 convs (with the norm) before upsampling")
    rpn_conv_depth: int = Field(1, ge=1)
    anchor_sizes: list[int] = Field([32, 64, 128, 256, 512], min_length=5, max_length=5)
    anchor_aspect_ratios: list[float] = Field([0.5, 1.0, 2.0], min_length=1)
    rpn_pre_nms_top_n_train: int = Field(2000, gt=0)
    rpn_pre_nms_top_n_test: int = Field(1000, gt=0)
    rpn_post_nms_top_n_train: int = Field(2000, gt=0)
    rpn_post_nms_top_n_test: int = Field(1000, gt=0)
    rpn_batch_size_per_image: int = Field(256, gt=0)
    roi_batch_size_per_image: int = Field(512, gt=0)
    roi_canonical_scale: int = Field(224, gt=0, description="RoI level mapping: scale it with the input size")

    @model_validator(mode="after")
    def _scratch_needs_a_real_norm(self) -> ModelConfig:
        if self.init == "scratch" and self.norm == "frozen_bn" and not self.allow_frozen_bn_scratch:
            raise ValueError(
                "model.init=scratch with model.norm=frozen_bn cannot train: frozen statistics of a randomly "
                "initialized network are meaningless. Use model.norm=gn or model.norm=syncbn (the paper's "
                "choices), or set model.allow_frozen_bn_scratch=true if you really mean it"
            )
        if self.init == "scratch" and self.freeze_at != 0:
            raise ValueError(
                f"model.freeze_at={self.freeze_at} with model.init=scratch would freeze random weights; "
                "use model.freeze_at=0 when training from scratch"
            )
        return self


class SolverConfig(_Section):
    """Detectron-style SGD schedule (see engine/schedule.py for the Nx convention)."""

    schedule: str = Field("1x", description="'1x', '2x', '3x', '6x', '9x' or any '<number>x'")
    base_epochs: float | None = Field(
        None, gt=0, description="None: 1x = 90k iterations at 16 images; else 1x = this many epochs"
    )
    images_per_batch: int = Field(16, gt=0, description="global images per iteration")
    base_lr: float = Field(0.02, gt=0, description="learning rate at 16 images per iteration")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    weight_decay_norm: float = Field(0.0, ge=0)
    weight_decay_bias: float = Field(0.0, ge=0)
    warmup_iters: int = Field(1000, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes under bfloat16 autocast (weights, gradients and SGD stay fp32)"
    )
    channels_last: bool = Field(False, description="keep the model's 4-d weights in channels-last memory layout")
    compile: Literal["eager", "default", "max-autotune-no-cudagraphs", "reduce-overhead"] = Field(
        "eager",
        description="eager (not compiled), or the torch.compile mode for the backbone and FPN (their input is the "
        "batch's padded size): each new size compiles first (minutes on a CPU; reduce-overhead adds CUDA graphs); "
        "the numbers differ from eager ones in the last bits. false / true: eager / default",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        # YAML reads off / on / false / true as booleans.
        return {False: "eager", True: "default"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_format(cls, value: Any) -> str:
        text = f"{value}x" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
        match = _SCHEDULE_PATTERN.match(text)
        if not match or float(match.group(1)) <= 0:
            raise ValueError(f"expected '1x', '2x', '3x', '6x', '9x' or '<positive number>x', got {value!r}")
        return text

    @property
    def schedule_multiplier(self) -> float:
        """The N of an 'Nx' schedule."""
        return float(self.schedule[:-1])


class EvalConfig(_Section):
    """COCO evaluation during and after training."""

    period: int = Field(0, ge=0, description="evaluate every this many iterations (0: only at the end)")
    period_from: dict[int, int] = Field(
        {},
        description="{ITERATION: PERIOD, ...}: from ITERATION on, evaluate every PERIOD iterations instead (fewer "
        "evaluations late in a long schedule; an evaluation falls where the iteration is a multiple of the period "
        "in force, so runs of different lengths evaluate at the same iterations)",
    )
    score_thresh: float = Field(0.05, ge=0, lt=1)
    detections_per_image: int = Field(100, gt=0)
    max_images: int | None = Field(None, gt=0, description="evaluate on the first N val images only")
    images_per_batch: int = Field(
        2,
        gt=0,
        description="images per inference batch (per process); a batch holds images of one size (none is padded, "
        "so an image's detections do not depend on the batch)",
    )
    final_all_images: bool = Field(
        False, description="the final evaluation uses every val image even when max_images limits the periodic ones"
    )
    precise_bn_iterations: int = Field(
        0,
        ge=0,
        description="before each evaluation, recompute BN/SyncBN running statistics over this many "
        "training batches (Precise BN; 0: off; no effect on GN or FrozenBN models)",
    )

    @field_validator("period_from")
    @classmethod
    def _positive_periods(cls, value: dict[int, int]) -> dict[int, int]:
        bad = {k: v for k, v in value.items() if k <= 0 or v <= 0}
        if bad:
            raise ValueError(f"{bad}: give positive iterations and periods, e.g. {{3000: 1500}}")
        return value


class OutputConfig(_Section):
    """What a run writes and how often."""

    checkpoint_period: int = Field(5000, gt=0)
    keep_last: int = Field(3, ge=1)
    keep_iterations: list[int] = Field([], description="also checkpoint at these iterations and keep them (forks)")
    log_period: int = Field(20, gt=0)


class PretrainConfig(_Section):
    """Classification pre-training of the detector's backbone (architecture and norm come from `model`).

    An ImageNet-style recipe scaled to the data: SGD with momentum, linear warm-up then cosine (or step) decay,
    no weight decay on norm parameters and biases, random-resized-crop and flip, optional label smoothing.
    """

    root: str = Field("data/demo/classification", description="ImageFolder root holding the two splits")
    train_dir: str = "train"
    val_dir: str = "val"
    image_size: int = Field(64, gt=0, description="crop size in pixels (ImageNet: 224)")
    min_crop_scale: float = Field(0.35, gt=0, le=1, description="smallest crop area of random-resized-crop")
    epochs: float = Field(30, gt=0)
    images_per_batch: int = Field(64, gt=0)
    base_lr: float = Field(0.1, gt=0, description="learning rate at 256 images per iteration (linear scaling)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    decay: Literal["cosine", "step"] = "cosine"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    num_workers: int = Field(2, ge=0)
    eval_period: int = Field(0, ge=0, description="evaluate every this many iterations (0: only at the end)")
    checkpoint_period: int = Field(500, gt=0)
    log_period: int = Field(20, gt=0)

    def path(self, relative: str) -> Path:
        return _under(self.root, relative)


class Config(_Section):
    """A whole experiment. Saved resolved in every run directory."""

    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def differences(self, other: Config, ignore: tuple[str, ...] = ()) -> list[str]:
        """Each setting that differs from `other`'s, as "key: this -> other" (dotted keys; a key in `ignore`, or
        under one, is left out)."""
        mine, theirs = _flat(self.model_dump(mode="json")), _flat(other.model_dump(mode="json"))
        return [
            f"{key}: {mine.get(key)!r} -> {theirs.get(key)!r}"
            for key in sorted(mine.keys() | theirs.keys())
            if mine.get(key) != theirs.get(key) and not any(key == i or key.startswith(i + ".") for i in ignore)
        ]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Packaged presets, as names accepted by `load_config` (e.g. 'demo/mask_rcnn'); study specs (files with
    `axes:`, such as demo/study) are not configs and are left out."""
    root = resources.files("scratchdet") / "configs"
    names = []
    for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for item in sorted((root / group).iterdir(), key=lambda p: p.name):
            is_yaml = item.name.endswith(".yaml") and not item.name.startswith("_")
            if is_yaml and "axes" not in (yaml.safe_load(item.read_text()) or {}):
                names.append(f"{group}/{item.name[:-5]}")
    return names


def resolve_config_path(preset_or_file: str) -> Path:
    """A YAML file given by path, or a packaged preset given by name."""
    given = Path(preset_or_file)
    if given.is_file():
        return given
    name = preset_or_file.removesuffix(".yaml")
    packaged = Path(str(resources.files("scratchdet") / "configs")) / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    hint = difflib.get_close_matches(name, preset_names(), n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    raise ScratchdetError(
        f"config '{preset_or_file}' is neither a YAML file nor a packaged preset.{suggestion} "
        f"Presets: {', '.join(preset_names())}"
    )


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping, read with the safe loader (YAML cannot build Python objects)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScratchdetError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ScratchdetError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScratchdetError(f"{path}: expected a mapping of sections (data:, model:, ...), got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping merged over its `_base_` file(s): paths relative to it, or packaged preset names."""
    if path.resolve() in seen:
        raise ScratchdetError(f"{path}: `_base_` files include each other in a loop")
    data = read_yaml_mapping(path)
    bases = data.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        relative = path.parent / base
        try:
            base_path = relative if relative.is_file() else resolve_config_path(str(base))
        except ScratchdetError as exc:
            raise ScratchdetError(f"{path}: _base_ {base!r}: {exc}") from None
        merged = _merge(merged, _read_with_bases(base_path, (*seen, path.resolve())))
    return _merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values are parsed as YAML (`0.01`, `[96, 128]`, `null`, `true`)."""
    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ScratchdetError(
                f"override '{override}' is not of the form section.key=value (e.g. solver.base_lr=0.01)"
            )
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScratchdetError(
                    f"override '{override}': '{'.'.join(parts[: depth + 1])}' is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return result


def _fields_at(location: tuple[Any, ...]) -> list[str]:
    """Names of the fields allowed in the section at `location` (for "did you mean")."""
    model: type[BaseModel] = Config
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


def _describe(error: Any) -> str:
    location = tuple(error["loc"])
    key = ".".join(str(p) for p in location) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(location[:-1])
        hint = difflib.get_close_matches(str(location[-1]), allowed, n=1)
        suggestion = f" Did you mean '{'.'.join(str(p) for p in (*location[:-1], hint[0]))}'?" if hint else ""
        return f"unknown key '{key}'.{suggestion} Allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error.get("input"), dict):  # a rule across several keys of a section: the message names them
        return f"{key}: {message}"
    return f"{key} = {error.get('input')!r} is not allowed: {message}"


def build_config(data: dict[str, Any], source: str) -> Config:
    """Validate a mapping; every problem is reported at once, each naming its key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ScratchdetError(f"invalid configuration in {source}:\n  " + "\n  ".join(lines)) from None


def read_config_data(preset_or_file: str) -> dict[str, Any]:
    """The unvalidated mapping of a preset or YAML file, merged over its `_base_` files."""
    return _read_with_bases(resolve_config_path(preset_or_file))


def load_config(preset_or_file: str, overrides: list[str] | None = None) -> Config:
    """Read a preset or YAML file, apply overrides, validate."""
    data = apply_overrides(read_config_data(preset_or_file), overrides or [])
    source = f"{preset_or_file}" + (f" with overrides {' '.join(overrides)}" if overrides else "")
    return build_config(data, source)


# The detector's architecture alone, initialized from scratch and unfrozen: what pre-training trains, what a step is
# timed on and what a weight file is checked against (a frozen_bn model is allowed here: nothing trains it as such).
SCRATCH_OVERRIDES = ["model.init=scratch", "model.freeze_at=0", "model.allow_frozen_bn_scratch=true"]


def without_init(config: Config) -> Config:
    """`config` with SCRATCH_OVERRIDES applied (validated again)."""
    return build_config(apply_overrides(config.model_dump(mode="json"), SCRATCH_OVERRIDES), "the config from scratch")
