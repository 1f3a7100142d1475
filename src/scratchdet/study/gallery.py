"""The report's gallery: what the arms detect on the same validation images, side by side.

Drawn from each arm's saved final detections (RUN_DIR/detections.json) and the validation images and annotations
its config names, so a report is rebuilt from run directories and the dataset, without a model or a GPU.

Columns: the ground truth, then one arm per init — on the full data, at that init's longest schedule, its lowest
seed, in one norm (the first with most inits) — each with its most confident detections, as many as the image has
objects (the same rule for every arm). Rows: the images where the arms find
most different numbers of objects (a ground-truth object is found by a detection of its category with box IoU at
least 0.5, greedily by score), then a seeded random choice among the rest; the same runs give the same rows.
Crops (finding 4): the ground-truth objects of those images whose masks the arms get most differently, each
cropped with its ground-truth mask and every arm's best mask of that category (mask IoU in the caption).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_segmentation_masks

from scratchdet.data.coco import decode_mask, load_rgb
from scratchdet.drawing import draw_items, enlarge, png
from scratchdet.engine import rundir
from scratchdet.errors import ScratchdetError
from scratchdet.evaluation.coco import read_detections, read_evaluation
from scratchdet.study.results import ArmResult, full_data_subset

IMAGES = 6  # rows
MOST_DIFFERENT = 3  # of which chosen for the arms' disagreement (the rest: seeded random)
SEED = 0
# Not one score threshold: arms trained differently are not calibrated alike (at 0.5 the CPU demo's scratch arm keeps
# 8 of its 8,550 detections, its pre-trained arm 871), so a threshold would show one arm's confidence, not what it
# finds. Each arm shows its most confident detections, as many as the image has objects, above detectron2's test
# threshold; the labels carry the scores.
SCORE_FLOOR = 0.05
MATCH_IOU = 0.5
CROPS = 6
PICTURE_SIDE = 256  # small images are enlarged (by whole pixels) to about this side
CROP_SIDE = 96

Items = list[dict[str, Any]]  # COCO annotations or results
PerImage = dict[int, Items]  # image id -> items
Crop = tuple[str, list[bytes], list[str]]  # caption, a PNG per column, a note per column


@dataclass
class Gallery:
    columns: list[str] = field(default_factory=list)  # "ground truth", then the arms' names
    rows: list[tuple[str, list[bytes]]] = field(default_factory=list)  # image file name, a PNG per column
    crops: list[Crop] = field(default_factory=list)
    missing: str = ""  # why there is no gallery


def gallery_arms(arms: list[ArmResult]) -> list[ArmResult]:
    """One finished arm per init, scratch first: full data, the init's longest schedule, the lowest seed."""
    full = full_data_subset(arms)
    usable = [
        a
        for a in arms
        if a.finished and a.train_subset == full and a.run_dir is not None and (a.run_dir / rundir.DETECTIONS).is_file()
    ]
    norms = sorted({a.norm for a in usable}, key=lambda n: (-len({a.init_name for a in usable if a.norm == n}), n))
    if not norms:
        return []
    chosen = []
    for init in sorted({a.init_name for a in usable if a.norm == norms[0]}, key=lambda i: (i != "scratch", i)):
        candidates = [a for a in usable if a.norm == norms[0] and a.init_name == init]
        chosen.append(min(candidates, key=lambda a: (-a.multiplier, a.seed)))
    return chosen


def build_gallery(arms: list[ArmResult]) -> Gallery:
    chosen = gallery_arms(arms)
    if not chosen:
        return Gallery(missing="no finished arm with saved detections")
    annotations_path, images_dir = chosen[0].val_annotations, chosen[0].val_images
    if annotations_path is None or images_dir is None or not annotations_path.is_file() or not images_dir.is_dir():
        return Gallery(missing=f"the validation images are not at {images_dir} (the dataset moved or was deleted)")
    ground_truth = _read_json(annotations_path)
    names = {int(c["id"]): str(c["name"]) for c in ground_truth.get("categories", [])}
    images = {int(i["id"]): i for i in ground_truth.get("images", [])}
    truth: PerImage = {i: [] for i in images}
    for annotation in ground_truth.get("annotations", []):
        if not annotation.get("iscrowd", 0) and annotation["image_id"] in truth:
            truth[annotation["image_id"]].append(annotation)
    found = [_most_confident(read_detections(arm.run_dir / rundir.DETECTIONS), truth) for arm in chosen]  # type: ignore[operator]
    rows = choose_images(sorted(set(images) & _evaluated(chosen, images)), truth, found)
    gallery = Gallery(columns=["ground truth"] + [a.name for a in chosen])
    pictures = {}
    for image_id in rows:
        picture = F.pil_to_tensor(load_rgb(images_dir / images[image_id]["file_name"]))
        pictures[image_id] = picture
        scale = max(1, PICTURE_SIDE // max(picture.shape[1:]))
        drawn = [draw_items(picture, truth[image_id], names, scale, with_scores=False)]
        drawn += [draw_items(picture, arm_found.get(image_id, []), names, scale) for arm_found in found]
        gallery.rows.append((str(images[image_id]["file_name"]), [png(d) for d in drawn]))
    files = {i: str(images[i]["file_name"]) for i in rows}
    gallery.crops = _crops(rows, pictures, truth, found, names, files)
    return gallery


def _most_confident(detections: Items, truth: PerImage) -> PerImage:
    """Per image, the arm's highest-scoring detections (at least SCORE_FLOOR), as many as the image has objects."""
    by_image: PerImage = {}
    for d in sorted(detections, key=lambda d: -d.get("score", 0)):
        image_id = int(d["image_id"])
        kept = by_image.setdefault(image_id, [])
        if d.get("score", 0) >= SCORE_FLOOR and len(kept) < len(truth.get(image_id, [])):
            kept.append(d)
    return by_image


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScratchdetError(f"{path}: cannot read the validation annotations for the gallery ({exc})") from None


def _evaluated(arms: list[ArmResult], images: dict[int, Any]) -> set[int]:
    """The images every arm's final evaluation scored (all of them where its saved evaluation is missing)."""
    ids = set(images)
    for arm in arms:
        path = rundir.evaluation_file(arm.run_dir, arm.total_iterations)  # type: ignore[arg-type]
        if path.is_file():
            ids &= set(read_evaluation(path)[0])
    return ids


def choose_images(candidates: list[int], truth: PerImage, found: list[PerImage]) -> list[int]:
    """MOST_DIFFERENT images where the arms find most different numbers of objects (ties: lower id), then a seeded
    random choice among the rest, IMAGES in all."""
    counts = {i: [len(_matches(truth[i], f.get(i, []), _box_iou)) for f in found] for i in candidates}
    spread = {i: max(c) - min(c) for i, c in counts.items()}
    different = sorted((i for i in candidates if spread[i] > 0), key=lambda i: (-spread[i], i))[:MOST_DIFFERENT]
    rest = [i for i in candidates if i not in different]
    return different + random.Random(SEED).sample(rest, min(IMAGES - len(different), len(rest)))


def _matches(truth: Items, detections: Items, iou: Any) -> dict[int, dict[str, Any]]:
    """Ground-truth index -> the detection that found it: by descending score, each detection takes the unmatched
    object of its category it overlaps most, if by at least MATCH_IOU."""
    matched: dict[int, dict[str, Any]] = {}
    for detection in sorted(detections, key=lambda d: -d["score"]):
        best, best_iou = -1, MATCH_IOU
        for index, target in enumerate(truth):
            if index in matched or target["category_id"] != detection["category_id"]:
                continue
            overlap = iou(target, detection)
            if overlap >= best_iou:
                best, best_iou = index, overlap
        if best >= 0:
            matched[best] = detection
    return matched


def _box_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    ax, ay, aw, ah = a["bbox"]
    bx, by, bw, bh = b["bbox"]
    inter = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _crops(
    rows: list[int],
    pictures: dict[int, torch.Tensor],
    truth: PerImage,
    found: list[PerImage],
    names: dict[int, str],
    files: dict[int, str],
) -> list[Crop]:
    """Up to CROPS objects with a mask: first those every arm made a mask for, whose mask IoU differs most between
    the arms; then those some arm missed."""
    if not any(a.get("segmentation") for i in rows for a in truth[i]):
        return []
    objects = []
    for image_id in rows:
        height, width = pictures[image_id].shape[1:]
        for target in truth[image_id]:
            if not target.get("segmentation"):
                continue
            mask = decode_mask(target["segmentation"], height, width).astype(bool)
            best = []
            for arm_found in found:
                same = [
                    d
                    for d in arm_found.get(image_id, [])
                    if d["category_id"] == target["category_id"] and d.get("segmentation")
                ]
                scored = [
                    (_mask_iou(mask, decode_mask(d["segmentation"], height, width).astype(bool)), d) for d in same
                ]
                top = max(scored, key=lambda s: s[0], default=(0.0, None))
                best.append(top if top[0] > 0 else (0.0, None))  # a mask elsewhere in the image did not find it
            ious = [b[0] for b in best]
            missed = any(d is None for _, d in best)  # a mask every arm made compares quality: those first
            objects.append((missed, -(max(ious) - min(ious)), image_id, int(target.get("id", 0)), target, best))
    crops = []
    for *_, image_id, _, target, best in sorted(objects, key=lambda o: o[:4])[:CROPS]:
        window = _window(target["bbox"], *pictures[image_id].shape[1:])
        cells = [_crop(pictures[image_id], [target], window)]
        cells += [_crop(pictures[image_id], [d] if d is not None else [], window) for _, d in best]
        notes = ["ground truth"] + [f"mask IoU {iou:.2f}" if d is not None else "not found" for iou, d in best]
        name = names.get(target["category_id"], str(target["category_id"]))
        crops.append((f"{name} in {files[image_id]}", cells, notes))
    return crops


def _window(bbox: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) around a box with a quarter of its size as margin, inside the image."""
    x, y, w, h = bbox
    margin = max(w, h) / 4 + 2
    left, top = max(0, int(x - margin)), max(0, int(y - margin))
    right, bottom = min(width, int(np.ceil(x + w + margin))), min(height, int(np.ceil(y + h + margin)))
    return top, left, max(1, bottom - top), max(1, right - left)


def _crop(picture: torch.Tensor, items: Items, window: tuple[int, int, int, int]) -> bytes:
    """The window of `picture` with the masks of `items` (no boxes, no labels: the mask is what is compared)."""
    top, left, height, width = window
    cropped = picture[:, top : top + height, left : left + width]
    scale = max(1, CROP_SIDE // max(height, width))
    masks = [
        decode_mask(item["segmentation"], *picture.shape[1:])[top : top + height, left : left + width] for item in items
    ]
    drawn = enlarge(cropped, scale)
    if masks:
        stacked = torch.from_numpy(np.stack(masks).astype(bool))
        stacked = stacked.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        drawn = draw_segmentation_masks(drawn, stacked, alpha=0.55, colors="#ffd700")
    return png(drawn)
