"""Shared fixtures: a small generated dataset (made once per test session) and a hand-built COCO folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scratchdet import portable
from scratchdet.data.synthetic import SynthSpec, generate

SMALL_SPEC = SynthSpec(
    train_images=80,
    val_images=12,
    image_size=128,
    classification_train_per_class=2,
    classification_val_per_class=1,
    seed=0,
)


def tiny_training_overrides(data_root: Path) -> list[str]:
    """A detector small enough to train for a few dozen iterations in seconds on two cores."""
    return [
        f"data.root={data_root}",
        "data.min_size=[64]",
        "data.max_size=96",
        "data.test_size=64",
        "data.num_workers=0",
        "model.narrow_width=16",
        "model.narrow_depth=10",
        "model.fpn_channels=32",
        "model.gn_groups=8",
        "model.box_head_conv_dim=32",
        "model.box_head_fc_dim=64",
        "model.mask_head_conv_dim=32",
        "model.anchor_sizes=[8,16,32,64,128]",
        "model.roi_canonical_scale=32",
        "model.roi_batch_size_per_image=32",
        "model.rpn_pre_nms_top_n_train=200",
        "model.rpn_post_nms_top_n_train=100",
        "model.rpn_pre_nms_top_n_test=100",
        "model.rpn_post_nms_top_n_test=50",
        "solver.images_per_batch=4",
        "solver.warmup_iters=10",
        "solver.base_lr=0.04",
        "eval.detections_per_image=20",
        "output.log_period=5",
    ]


def run_pinned(arguments: list[str]) -> None:
    """`scratchdet --portable ARGUMENTS` in a process of its own: the runs whose numbers tests/pinned.py pins.

    Portable arithmetic has to be chosen before torch first computes, which in this process is long past; in a
    child it holds whatever the machine, this process's settings or the environment it was started with. On a CPU
    that cannot compute portably the run uses its native kernels and `assert_pinned` skips.
    """
    flag = [] if portable.unsupported() else ["--portable"]
    command = [sys.executable, "-m", "scratchdet", *flag, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}"


def final_weights(run_dir: Path) -> dict[str, Any]:
    """The model weights of a run's newest checkpoint (the one `last_checkpoint` names)."""
    import torch

    pointer = (run_dir / "checkpoints" / "last_checkpoint").read_text()
    return dict(torch.load(run_dir / "checkpoints" / pointer, weights_only=True)["model"])


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SMALL_SPEC, workers=2, quiet=True)
    return out


def write_image(path: Path, width: int, height: int, mode: str = "RGB", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    Image.fromarray(np.full(shape, value, np.uint8), "RGB" if mode == "RGB" else None).convert(mode).save(path)


def square_polygon(x: float, y: float, size: float) -> list[float]:
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def tiny_coco(root: Path) -> dict[str, Any]:
    """Three 40x30 images: polygon + uncompressed RLE + crowd on image 1, compressed RLE on 2, nothing on 3."""
    from faster_coco_eval.core import mask as mask_utils

    for name in ("a.png", "b.png", "c.png"):
        write_image(root / "images" / name, 40, 30)
    rle_mask = np.zeros((30, 40), np.uint8)
    rle_mask[5:15, 20:30] = 1  # 10x10 at x=20, y=5
    compressed = mask_utils.encode(np.asfortranarray(rle_mask[:, :, None]))[0]
    column_major = rle_mask.flatten(order="F")
    runs, current, length = [], 0, 0
    for value in column_major:
        if value != current:
            runs.append(length)
            current, length = value, 0
        length += 1
    runs.append(length)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "c.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 3, 8, 8],
                "area": 64,
                "iscrowd": 0,
                "segmentation": [square_polygon(2, 3, 8)],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 9,
                "bbox": [20, 5, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": {"size": [30, 40], "counts": runs},
            },
            {
                "id": 3,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 20, 40, 10],
                "area": 400,
                "iscrowd": 1,
                "segmentation": {"size": [30, 40], "counts": [20, 10] * 39 + [20, 10 + 0]},
            },
            {
                "id": 4,
                "image_id": 2,
                "category_id": 9,
                "bbox": [20, 5, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": {"size": [30, 40], "counts": compressed["counts"].decode("ascii")},
            },
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 9, "name": "nine"}],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return data


@pytest.fixture
def tiny_coco_dir(tmp_path: Path) -> Path:
    tiny_coco(tmp_path)
    return tmp_path


def build_test_detector(**settings: Any) -> Any:
    """`build_detector` with what a test leaves out taken from the config's defaults (model and data sections)."""
    from scratchdet.assemble import detector_arguments
    from scratchdet.config import DataConfig, ModelConfig
    from scratchdet.modeling.detector import build_detector

    model = {k: v for k, v in settings.items() if k in ModelConfig.model_fields}
    data = DataConfig.model_construct()
    defaults = {**detector_arguments(ModelConfig.model_construct(**model)), "num_keypoints": 17,
                "test_size": data.test_size, "max_size": data.max_size, "pixel_mean": data.pixel_mean,
                "pixel_std": data.pixel_std}  # fmt: skip
    return build_detector(**{**defaults, **settings})
