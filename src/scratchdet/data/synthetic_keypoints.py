"""Generated person-keypoint data: stick figures whose 17 joints are COCO's person keypoints.

Each image holds one or two figures with random limb angles, size, lean and colour on a textured background.
The figure's pixels are its mask; a joint is visible (v=2) where it lies on the figure's visible pixels, occluded
(v=1) where a later figure covers it, and unlabelled (v=0, at 0,0) outside the image, as COCO marks them. The
category is COCO's `person` with its keypoint names and skeleton, so COCO's OKS sigmas apply unchanged. Like the
shape scenes, every image is a pure function of (seed, split, index).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_utils
from PIL import Image, ImageDraw

from scratchdet.data.synthetic import (
    SPLIT_CODES,
    _background,
    _random_colour,
    _run_parallel,
    _save_png,
    _to_uint8,
    claim_folder,
)
from scratchdet.storage import atomic_write_text

KEYPOINT_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
FLIP_INDEX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # left ↔ right, for horizontal flips
LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6), (11, 12), (5, 11), (6, 12)]
PERSON = {"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINT_NAMES, "skeleton": SKELETON}


def _joints(rng: np.random.Generator) -> np.ndarray:
    """(17, 2) joint positions of a figure 1 unit tall, centred at the origin, facing the viewer."""
    joints = np.zeros((17, 2))
    joints[0] = (0, -0.36)
    joints[1:5] = [(0.03, -0.40), (-0.03, -0.40), (0.07, -0.38), (-0.07, -0.38)]
    joints[5:7] = [(0.12, -0.24), (-0.12, -0.24)]
    joints[11:13] = [(0.08, 0.08), (-0.08, 0.08)]
    for root, middle, end, side in ((5, 7, 9, 1), (6, 8, 10, -1)):  # arms hang and swing
        upper, lower = rng.uniform(-0.3, 2.2), rng.uniform(-0.5, 2.5)
        joints[middle] = joints[root] + 0.16 * np.array([side * math.sin(upper), math.cos(upper)])
        joints[end] = joints[middle] + 0.15 * np.array([side * math.sin(upper + lower), math.cos(upper + lower)])
    for root, middle, end, side in ((11, 13, 15, 1), (12, 14, 16, -1)):  # legs stand or stride
        upper, lower = rng.uniform(-0.15, 0.6), rng.uniform(-0.6, 0.1)
        joints[middle] = joints[root] + 0.22 * np.array([side * math.sin(upper), math.cos(upper)])
        joints[end] = joints[middle] + 0.22 * np.array([side * math.sin(upper + lower), math.cos(upper + lower)])
    return joints


def _draw_figure(joints: np.ndarray, height: int, width: int, thickness: float) -> np.ndarray:
    """The figure's (H, W) bool mask: limbs as thick lines, a torso, a head."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    torso = [tuple(joints[i]) for i in (5, 6, 12, 11)]
    draw.polygon(torso, fill=1)
    for a, b in LIMBS:
        draw.line([tuple(joints[a]), tuple(joints[b])], fill=1, width=max(1, round(thickness)))
    head = joints[0] + (joints[0] - (joints[5] + joints[6]) / 2) * 0.05
    radius = abs(joints[3, 0] - joints[4, 0]) * 0.75
    draw.ellipse([head[0] - radius, head[1] - radius * 1.2, head[0] + radius, head[1] + radius * 1.2], fill=1)
    return np.asarray(canvas, dtype=bool)


def render_person_scene(seed: int, split: str, index: int, size: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image and its person annotations (bbox, area, RLE, keypoints)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split] + 10, index])
    height, width = size, size
    image = _background(rng, height, width)
    figures = []
    for _ in range(int(rng.integers(1, 3))):
        tall = size * rng.uniform(0.6, 0.95)
        lean = rng.uniform(-0.25, 0.25)
        rotation = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])
        centre = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.35, 0.65) * height])
        joints = _joints(rng) @ rotation.T * tall + centre
        mask = _draw_figure(joints, height, width, thickness=tall * 0.06)
        colour = np.asarray(_random_colour(rng), dtype=np.float32)
        image[mask] = colour
        figures.append((joints, mask))
    covered = np.zeros((height, width), bool)
    annotations = []
    for joints, mask in reversed(figures):  # front to back
        visible = mask & ~covered
        covered |= mask
        if visible.sum() < 20:
            continue
        annotations.append(_annotation(joints, mask, visible, height, width))
    annotations.reverse()
    return _to_uint8(image), annotations


def _annotation(joints: np.ndarray, mask: np.ndarray, visible: np.ndarray, height: int, width: int) -> dict[str, Any]:
    keypoints: list[float] = []
    for x, y in joints:
        col, row = round(float(x)), round(float(y))
        if not (0 <= col < width and 0 <= row < height):
            keypoints += [0, 0, 0]
            continue
        near = visible[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2].any()
        keypoints += [round(float(x), 2), round(float(y), 2), 2 if near else 1]
    ys, xs = np.nonzero(visible)
    rle = mask_utils.encode(np.asfortranarray(visible[:, :, None].astype(np.uint8)))[0]
    return {
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        "area": int(visible.sum()),
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
    }


def _write(args: tuple[int, str, int, int, str]) -> tuple[int, int, int, list[dict[str, Any]]]:
    seed, split, index, size, folder = args
    image, annotations = render_person_scene(seed, split, index, size)
    _save_png(image, Path(folder) / f"{index:06d}.png")
    return index, image.height, image.width, annotations


def generate_keypoints(
    out: Path, train_images: int, val_images: int, size: int = 128, seed: int = 0, workers: int = 1, quiet: bool = False
) -> None:
    """Write `out/{train,val}/*.png` and `out/annotations/person_keypoints_{train,val}.json` (a new or empty folder,
    or one generated before: `claim_folder`)."""
    claim_folder(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_images), ("val", val_images)):
        (out / split).mkdir(exist_ok=True)
        jobs = [(seed, split, i, size, str(out / split)) for i in range(count)]
        rows = _run_parallel(_write, jobs, workers, f"people/{split}", quiet)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, height, width, found in rows:
            images.append({"id": index + 1, "file_name": f"{index:06d}.png", "height": height, "width": width})
            for annotation in found:
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0, **annotation}
                )
        data = {
            "info": {"description": f"scratchdet generated stick figures ({split})"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [PERSON],
        }
        atomic_write_text(out / "annotations" / f"person_keypoints_{split}.json", json.dumps(data))
