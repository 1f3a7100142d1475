"""COCO-format instance data: reading the JSON, decoding masks, nested subsets, and the torch Dataset.

Works unchanged on the real COCO 2017 layout: polygons, uncompressed and compressed RLE; crowd regions are kept in
the JSON for evaluation but never become training targets. Category ids (any integers) map to contiguous labels
1..K in id order (0 is background, as torchvision's detectors expect).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from scratchdet.data.transforms import with_seed
from scratchdet.errors import ScratchdetError

REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


def read_coco_json(path: Path) -> dict[str, Any]:
    """The parsed annotation file; a clear error when it cannot be read or lacks COCO's top-level lists."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise ScratchdetError(f"{path}: annotation file not found; check data.root and the annotation path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScratchdetError(f"{path}: cannot read the annotation file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ScratchdetError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file may be truncated or not a COCO annotation file"
        ) from None
    except RecursionError:  # e.g. [[[[... a million levels deep: no COCO file nests more than a few levels
        raise ScratchdetError(f"{path}: JSON nested too deeply to be a COCO annotation file") from None
    if not isinstance(data, dict):
        raise ScratchdetError(f"{path}: expected a JSON object with {', '.join(REQUIRED_TOP_LEVEL)}")
    missing = [key for key in REQUIRED_TOP_LEVEL if not isinstance(data.get(key), list)]
    if missing:
        raise ScratchdetError(
            f"{path}: missing or not a list: {', '.join(missing)}. A COCO instances file has the lists "
            f"'images', 'annotations' and 'categories'"
        )
    return data


@dataclass
class CocoIndex:
    """The annotation file indexed by image: images in id order, annotations grouped by image id."""

    path: Path
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    label_of_category: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.label_of_category = {c["id"]: i + 1 for i, c in enumerate(self.categories)}

    @classmethod
    def from_json(cls, path: Path, data: dict[str, Any] | None = None) -> CocoIndex:
        data = data if data is not None else read_coco_json(path)
        images = {image["id"]: image for image in sorted(data["images"], key=lambda image: image["id"])}
        annotations: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        for annotation in data["annotations"]:
            annotations.setdefault(annotation["image_id"], []).append(annotation)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        return cls(Path(path), images, annotations, categories)

    def trainable_annotations(self, image_id: int) -> list[dict[str, Any]]:
        """Non-crowd annotations with a box of positive size: what becomes a training target."""
        return [
            a
            for a in self.annotations.get(image_id, [])
            if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0
        ]


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed RLE or compressed RLE → one compressed RLE."""
    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of one annotation's segmentation."""
    return np.asarray(mask_utils.decode(segmentation_to_rle(segmentation, height, width)), dtype=np.uint8)


def load_rgb(path: Path) -> Image.Image:
    """An image as 8-bit RGB. Grey, palette, RGBA, CMYK and 16-bit images are converted (16-bit by scaling)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
                grey = np.clip(np.rint(array * 255.0 / peak), 0, 255).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            return image.convert("RGB")
    except FileNotFoundError:
        raise ScratchdetError(f"{path}: image file not found; run `scratchdet data check` on the dataset") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ScratchdetError(
            f"{path}: cannot decode the image ({exc}); run `scratchdet data check` to list every bad file"
        ) from None


def nested_subset(image_ids: Sequence[int], size: int, seed: int) -> list[int]:
    """`size` image ids drawn with `seed`; for one seed, a smaller subset is always inside a larger one.

    The ids are put in one seeded random order and the first `size` are taken, so the 1k subset is the start of
    the 10k subset, as in the paper's less-data experiments.
    """
    if size > len(image_ids):
        raise ScratchdetError(
            f"data.train_subset={size} is larger than the training set ({len(image_ids)} usable images); "
            f"use at most {len(image_ids)} or remove data.train_subset"
        )
    order = np.random.default_rng(seed).permutation(np.asarray(sorted(image_ids), dtype=np.int64))
    return sorted(int(i) for i in order[:size])


Transform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


class CocoDetection(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """Images and targets in torchvision's detection format.

    Item `i` is `(image, target)`: image float (3, H, W) after `transforms`; target holds `boxes` (N, 4) XYXY
    float in input pixels, `labels` (N,) int64 in 1..K, `masks` (N, H, W) uint8 when `with_masks`,
    `image_id` int and `orig_size` (H, W) of the file. An item may also be asked for as `(i, seed)`: the
    random transforms are then drawn from `seed`, so an item does not depend on which worker loads it, and the
    target carries it as `sample_seed` for the detector's anchor and RoI sampling.
    """

    def __init__(
        self,
        index: CocoIndex,
        images_dir: Path,
        image_ids: Sequence[int],
        transforms: Transform | None = None,
        with_masks: bool = True,
        with_keypoints: bool = False,
    ) -> None:
        self.index = index
        self.images_dir = Path(images_dir)
        self.image_ids = list(image_ids)
        self.transforms = transforms
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.num_keypoints = len(index.categories[0].get("keypoints", [])) if with_keypoints else 0

    def __len__(self) -> int:
        return len(self.image_ids)

    def aspect_groups(self) -> list[int]:
        """0 for landscape or square images, 1 for portrait ones (from the JSON, without opening files)."""
        return [int(self.index.images[i]["width"] < self.index.images[i]["height"]) for i in self.image_ids]

    def raw_target(self, image_id: int) -> dict[str, Any]:
        """The target of one image before transforms, as plain numpy arrays."""
        info = self.index.images[image_id]
        height, width = int(info["height"]), int(info["width"])
        annotations = self.index.trainable_annotations(image_id)
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH → XYXY
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = np.array([self.index.label_of_category[a["category_id"]] for a in annotations], dtype=np.int64)
        target: dict[str, Any] = {"boxes": boxes[keep], "labels": labels[keep]}
        if self.with_masks:
            masks = [decode_mask(a["segmentation"], height, width) for a, k in zip(annotations, keep, strict=True) if k]
            target["masks"] = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        if self.with_keypoints:  # (N, K, 3): x, y, visibility; an annotation without keypoints has none visible
            keypoints = [
                a.get("keypoints") or [0.0] * 3 * self.num_keypoints
                for a, k in zip(annotations, keep, strict=True)
                if k
            ]
            target["keypoints"] = np.asarray(keypoints, dtype=np.float32).reshape(-1, self.num_keypoints, 3)
        return target

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        position, seed = item if isinstance(item, tuple) else (item, None)
        image_id = self.image_ids[position]
        info = self.index.images[image_id]
        pil = load_rgb(self.images_dir / info["file_name"])
        if pil.size != (info["width"], info["height"]):
            raise ScratchdetError(
                f"{self.images_dir / info['file_name']}: the file is {pil.size[0]}x{pil.size[1]} but "
                f"{self.index.path} says {info['width']}x{info['height']}; fix the JSON or the image"
            )
        raw = self.raw_target(image_id)
        size = (pil.height, pil.width)
        image = tv_tensors.Image(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(raw["boxes"]), format="XYXY", canvas_size=size),
            "labels": torch.from_numpy(raw["labels"]),
        }
        if self.with_masks:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(raw["masks"]))
        if self.with_keypoints:  # positions move with the image; visibility rides along (flips swap both)
            keypoints = torch.from_numpy(raw["keypoints"])
            target["keypoints"] = tv_tensors.KeyPoints(keypoints[..., :2], canvas_size=size)
            target["keypoint_visibility"] = keypoints[..., 2]
        if self.transforms is not None:
            image, target = with_seed(seed, self.transforms, image, target)
        # Plain tensors from here on: the models and collation need no tv_tensors metadata.
        target = {key: value.as_subclass(torch.Tensor) for key, value in target.items()}
        if self.with_keypoints:
            visibility = target.pop("keypoint_visibility")
            target["keypoints"] = torch.cat([target["keypoints"], visibility[..., None]], dim=-1)
        target["image_id"] = image_id
        target["orig_size"] = size
        if seed is not None:
            target["sample_seed"] = seed  # the detector draws this image's anchor and RoI samples from it
        return image.as_subclass(torch.Tensor), target
