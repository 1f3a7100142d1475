"""The dataset checker behind `scratchdet data check` and the check that training runs first.

It reads a COCO instances JSON and its image folder and reports a summary plus every problem, each one naming
the image or annotation and saying what to do. Severities: `error` (training refuses, unless told to skip the bad
items), `warning` (training goes on, e.g. a box that pokes out of its image is clipped), `note` (e.g. a grey
image is converted to RGB).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from faster_coco_eval.core import mask as mask_utils
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from scratchdet.data.coco import read_coco_json, segmentation_to_rle
from scratchdet.errors import ScratchdetError

Severity = Literal["error", "warning", "note"]
# What `data check` decodes at most per image (64 megapixels, 8000 x 8000; COCO's are under 0.5): a header claiming
# more is reported, not decoded, so a hostile or mistaken file cannot make the check allocate gigabytes.
MAX_DECODED_PIXELS = 64_000_000
CONVERTED_MODES = {
    "L": "grey",
    "LA": "grey with alpha",
    "P": "palette",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I": "32-bit integer",
    "1": "1-bit",
}
SMALL_AREA, LARGE_AREA = 32**2, 96**2  # COCO's size buckets
EDGE_TOLERANCE = 1.0  # pixels a box may exceed the image by before it is reported (rounding in annotation tools)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    message: str
    image_id: int | None = None
    annotation_id: int | None = None

    def __str__(self) -> str:
        where = [
            f"image {self.image_id}" if self.image_id is not None else "",
            f"annotation {self.annotation_id}" if self.annotation_id is not None else "",
        ]
        prefix = ", ".join(w for w in where if w)
        return f"{self.severity.upper():7s} {prefix + ': ' if prefix else ''}{self.message}"


@dataclass
class CheckReport:
    annotations_path: Path
    images_dir: Path
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def add(self, severity: Severity, message: str, image_id: Any = None, annotation_id: Any = None) -> None:
        self.problems.append(Problem(severity, message, _as_id(image_id), _as_id(annotation_id)))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_problems: int = 200) -> str:
        lines = [f"dataset check: {self.annotations_path} (images in {self.images_dir})"]
        lines += [f"  {key:<22s} {value}" for key, value in self.summary.items()]
        counts = Counter(p.severity for p in self.problems)
        lines.append(
            f"  {'result':<22s} {counts['error']} errors, {counts['warning']} warnings, {counts['note']} notes"
        )
        shown = sorted(self.problems, key=lambda p: ("error", "warning", "note").index(p.severity))
        lines += [f"  {problem}" for problem in shown[:max_problems]]
        if len(shown) > max_problems:
            lines.append(f"  ... and {len(shown) - max_problems} more")
        return "\n".join(lines)


def _as_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


# --------------------------------------------------------------------------------------------- records


def _check_ids(report: CheckReport, records: list[Any], kind: str) -> set[int]:
    """Ids of well-formed records; duplicates and missing ids are errors."""
    seen: Counter[int] = Counter()
    for position, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("id"), int):
            report.add("error", f"{kind} #{position} has no integer 'id'; every {kind} needs a unique integer id")
            continue
        seen[record["id"]] += 1
    for duplicate in (i for i, n in seen.items() if n > 1):
        arguments = {"image_id": duplicate} if kind == "image" else {"annotation_id": duplicate}
        arguments = arguments if kind != "category" else {}
        report.add("error", f"{kind} id {duplicate} is used {seen[duplicate]} times; ids must be unique", **arguments)
    return set(seen)


def _check_categories(report: CheckReport, categories: list[Any]) -> set[int]:
    ids = _check_ids(report, categories, "category")
    for category in categories:
        if isinstance(category, dict) and not isinstance(category.get("name"), str):
            report.add("error", f"category {category.get('id')} has no 'name' string")
    return ids


def _check_image_record(report: CheckReport, image: dict[str, Any]) -> bool:
    ok = True
    if not isinstance(image.get("file_name"), str) or not image.get("file_name"):
        report.add("error", "no 'file_name' string", image_id=image["id"])
        ok = False
    for key in ("width", "height"):
        if not isinstance(image.get(key), int) or image[key] <= 0:
            report.add("error", f"'{key}' must be a positive integer, got {image.get(key)!r}", image_id=image["id"])
            ok = False
    return ok


def _inspect_image_file(
    path: Path, deep: bool, max_pixels: int = MAX_DECODED_PIXELS
) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(error, (width, height), mode) of an image file; `deep` decodes every pixel to catch truncation, unless the
    header's size is above `max_pixels` (decoding it would take its width x height x 3 bytes and more)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if deep and width * height > max_pixels:
                return (
                    (
                        f"image is {width}x{height}, above the {max_pixels:,} pixels data check decodes; resize it, "
                        "or raise the limit with --max-pixels if images this large are meant"
                    ),
                    None,
                    None,
                )
            if deep:
                image.load()
            return None, image.size, image.mode
    except FileNotFoundError:
        return "image file is missing", None, None
    except Image.DecompressionBombError as exc:
        return f"image is too large to decode safely ({exc}); resize it", None, None
    except UnidentifiedImageError:
        return "file is not an image PIL can read (wrong format or corrupt)", None, None
    except OSError as exc:
        return f"image cannot be decoded ({exc}); it may be truncated: re-export or remove it", None, None


def _leaves_folder(report: CheckReport, image: dict[str, Any], images_dir: Path) -> bool:
    """An absolute `file_name`, or one whose `..` climbs out of the image folder, would make the tool read a file
    the dataset does not hold (someone else's COCO file choosing what this machine opens): an error."""
    name = image["file_name"]
    normal = os.path.normpath(name)
    if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
        report.add(
            "error",
            f"file_name {name!r} points outside the image folder {images_dir}; give a path inside "
            "it (relative, without '..' climbing out)",
            image_id=image["id"],
        )
        return True
    return False


def _check_image_files(
    report: CheckReport, images: list[dict[str, Any]], images_dir: Path, deep: bool, quiet: bool, max_pixels: int
) -> None:
    inside = [image for image in images if not _leaves_folder(report, image, images_dir)]
    images = inside
    paths = [images_dir / image["file_name"] for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _inspect_image_file(p, deep, max_pixels), paths),
                total=len(paths),
                desc="checking images",
                disable=quiet or None,  # None: only on a terminal
                leave=False,
            )
        )
    for image, path, (error, size, mode) in zip(images, paths, results, strict=True):
        if error or size is None:
            report.add("error", f"{path}: {error}", image_id=image["id"])
            continue
        if size != (image["width"], image["height"]):
            report.add(
                "error",
                f"{path}: file is {size[0]}x{size[1]} but the JSON says {image['width']}x{image['height']}; "
                "fix width/height in the JSON or re-export the image",
                image_id=image["id"],
            )
        if mode in CONVERTED_MODES:
            report.add("note", f"{path}: {CONVERTED_MODES[mode]} image, converted to 8-bit RGB", image_id=image["id"])


def _check_box(report: CheckReport, annotation: dict[str, Any], image: dict[str, Any] | None) -> None:
    box, ann_id, image_id = annotation.get("bbox"), annotation["id"], annotation.get("image_id")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        report.add("error", f"'bbox' must be [x, y, width, height] numbers, got {box!r}", image_id, ann_id)
        return
    if _has_nan(box):
        report.add("error", f"bbox {box} has NaN or infinite values", image_id, ann_id)
        return
    x, y, w, h = box
    if w <= 0 or h <= 0:
        report.add(
            "error", f"bbox {box} has non-positive width or height; fix or remove the annotation", image_id, ann_id
        )
        return
    if image is None or not _is_number(image.get("width")) or not _is_number(image.get("height")):
        return
    width, height = image["width"], image["height"]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        report.add("error", f"bbox {box} lies entirely outside the {width}x{height} image", image_id, ann_id)
    elif (
        x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > width + EDGE_TOLERANCE or y + h > height + EDGE_TOLERANCE
    ):
        report.add(
            "warning",
            f"bbox {box} extends outside the {width}x{height} image; it is clipped in training",
            image_id,
            ann_id,
        )


def _check_segmentation(report: CheckReport, annotation: dict[str, Any], image: dict[str, Any] | None) -> None:
    segmentation, ann_id, image_id = annotation.get("segmentation"), annotation["id"], annotation.get("image_id")
    if segmentation is None:
        report.add("warning", "no 'segmentation': usable for box detection only, not by a mask head", image_id, ann_id)
        return
    if _has_nan(segmentation):
        report.add("error", "segmentation has NaN or infinite values", image_id, ann_id)
        return
    if image is None or not isinstance(image.get("width"), int) or not isinstance(image.get("height"), int):
        return
    height, width = image["height"], image["width"]
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                report.add("error", "a polygon must be a flat list of numbers [x1, y1, x2, y2, ...]", image_id, ann_id)
                return
            if len(polygon) < 6 or len(polygon) % 2:
                report.add(
                    "error",
                    f"polygon with {len(polygon) / 2:g} points; a polygon needs at least 3 (x, y) points",
                    image_id,
                    ann_id,
                )
                return
        if not segmentation:
            report.add("error", "empty polygon list: the mask is empty", image_id, ann_id)
            return
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        if size != [height, width]:
            report.add(
                "error",
                f"RLE size {size} differs from the image's [height, width] = [{height}, {width}]",
                image_id,
                ann_id,
            )
            return
        if not isinstance(segmentation.get("counts"), list | str):
            report.add("error", "RLE 'counts' must be a list (uncompressed) or a string (compressed)", image_id, ann_id)
            return
    else:
        report.add(
            "error", f"segmentation must be polygons or RLE, got {type(segmentation).__name__}", image_id, ann_id
        )
        return
    try:
        area = float(mask_utils.area(segmentation_to_rle(segmentation, height, width)))
    except Exception as exc:  # the C decoder rejects malformed counts with various exception types
        report.add("error", f"segmentation cannot be decoded ({exc})", image_id, ann_id)
        return
    if area == 0:
        report.add(
            "error", "the mask is empty (no pixel inside the image); fix or remove the annotation", image_id, ann_id
        )


def _check_annotations(
    report: CheckReport, annotations: list[Any], images: dict[int, dict[str, Any]], category_ids: set[int]
) -> list[dict[str, Any]]:
    _check_ids(report, annotations, "annotation")
    valid = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
            continue
        ann_id, image_id = annotation["id"], annotation.get("image_id")
        if image_id not in images:
            report.add("error", f"image_id {image_id!r} is not in 'images'", annotation_id=ann_id)
            continue
        if annotation.get("category_id") not in category_ids:
            report.add(
                "error",
                f"category_id {annotation.get('category_id')!r} is not in 'categories' (known: {sorted(category_ids)})",
                image_id,
                ann_id,
            )
        if annotation.get("iscrowd", 0) not in (0, 1):  # "no" would silently count as a crowd region
            report.add("error", f"'iscrowd' must be 0 or 1, got {annotation['iscrowd']!r}", image_id, ann_id)
        if "area" in annotation and (not _is_number(annotation["area"]) or _has_nan(annotation["area"])):
            report.add("error", f"'area' must be a finite number, got {annotation['area']!r}", image_id, ann_id)
        before = len(report.errors)
        _check_box(report, annotation, images[image_id])
        _check_segmentation(report, annotation, images[image_id])
        if len(report.errors) == before:
            valid.append(annotation)
    return valid


# --------------------------------------------------------------------------------------------- summary


def _summarize(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], categories: list[Any]
) -> dict[str, Any]:
    plain = [a for a in annotations if not a.get("iscrowd", 0)]
    per_image = Counter(a["image_id"] for a in plain)
    counts = [per_image.get(image["id"], 0) for image in images]
    areas = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in plain], dtype=np.float64)
    names = {c["id"]: c.get("name", "?") for c in categories if isinstance(c, dict) and "id" in c}
    per_category = Counter(names.get(a["category_id"], "?") for a in plain)
    sizes = [(i["width"], i["height"]) for i in images if _as_id(i.get("width")) and _as_id(i.get("height"))]
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "images": len(images),
        "instances": f"{len(plain)} (+ {len(annotations) - len(plain)} crowd regions)",
        "instances per image": f"mean {np.mean(counts) if counts else 0:.2f}, max {max(counts, default=0)}",
        "images without objects": sum(c == 0 for c in counts),
        "per category": ", ".join(f"{name} {n}" for name, n in sorted(per_category.items())),
        "small/medium/large": f"{int((areas < SMALL_AREA).sum())} / "
        f"{int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum())} / {int((areas >= LARGE_AREA).sum())}",
        "image sizes": f"width {min(widths, default=0)}-{max(widths, default=0)}, "
        f"height {min(heights, default=0)}-{max(heights, default=0)}, "
        f"{len(set(sizes))} distinct",
    }


def check_dataset(
    annotations_path: Path,
    images_dir: Path,
    deep: bool = True,
    quiet: bool = False,
    data: dict[str, Any] | None = None,
    max_pixels: int = MAX_DECODED_PIXELS,
) -> CheckReport:
    """Check a COCO instances file and its images; `deep` decodes every image (catches truncated files) whose
    header says at most `max_pixels`.

    `data`: the file's content when the caller has already read it (COCO's train JSON takes seconds to parse).
    """
    report = CheckReport(Path(annotations_path), Path(images_dir))
    if data is None:
        try:
            data = read_coco_json(report.annotations_path)
        except ScratchdetError as exc:
            report.add("error", str(exc))
            return report
    if not data["images"]:
        report.add(
            "error", f"{report.annotations_path}: the 'images' list is empty: there is nothing to train or evaluate on"
        )
    category_ids = _check_categories(report, data["categories"])
    image_ids = _check_ids(report, data["images"], "image")
    images = [i for i in data["images"] if isinstance(i, dict) and isinstance(i.get("id"), int)]
    usable = [image for image in images if _check_image_record(report, image)]
    if not images_dir.is_dir():
        report.add("error", f"image folder {images_dir} does not exist; check the --images / data path")
    else:
        _check_image_files(report, usable, report.images_dir, deep, quiet, max_pixels)
    by_id = {image["id"]: image for image in images if image["id"] in image_ids}
    valid = _check_annotations(report, data["annotations"], by_id, category_ids)
    report.summary = _summarize(images, valid, data["categories"])
    return report


def without_bad_items(data: dict[str, Any], report: CheckReport) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The annotation data less the images and annotations that have errors, and the list of what was dropped.

    An error tied to an image drops that image with its annotations; one tied to an annotation drops that
    annotation. Errors tied to neither (an unreadable file, duplicate category ids) cannot be skipped.
    """
    global_errors = [p for p in report.errors if p.image_id is None and p.annotation_id is None]
    if global_errors:
        raise ScratchdetError(
            "these problems cannot be skipped, fix the dataset:\n  " + "\n  ".join(map(str, global_errors))
        )
    bad_images = {p.image_id for p in report.errors if p.annotation_id is None}
    bad_annotations = {p.annotation_id for p in report.errors if p.annotation_id is not None}
    skipped = [{"image_id": p.image_id, "annotation_id": p.annotation_id, "problem": p.message} for p in report.errors]
    kept = dict(data)
    kept["images"] = [i for i in data["images"] if i.get("id") not in bad_images]
    kept["annotations"] = [
        a for a in data["annotations"] if a.get("id") not in bad_annotations and a.get("image_id") not in bad_images
    ]
    return kept, skipped
