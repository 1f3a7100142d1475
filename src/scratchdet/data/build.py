"""From paths and switches to datasets: check → drop bad items (if asked) → subset → transforms.

Returns what the run directory must record (the chosen image ids, the skipped items) beside the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchdet.data.check import check_dataset, without_bad_items
from scratchdet.data.coco import CocoDetection, CocoIndex, Transform, nested_subset, read_coco_json
from scratchdet.errors import ScratchdetError


@dataclass
class PreparedDataset:
    dataset: CocoDetection
    skipped_items: list[dict[str, Any]] = field(default_factory=list)


# Skipping is for training only: an evaluation without its bad items would report another dataset's metrics.
FIX_TRAINING = "fix them, or set data.skip_bad_items=true to train without the bad items"
FIX_EVALUATION = "fix them (bad items are never skipped in evaluation: the metrics would be of another set)"


def _checked_index(
    annotations: Path, images_dir: Path, skip_bad_items: bool, quiet: bool, fix: str = FIX_TRAINING
) -> tuple[CocoIndex, list]:
    data = read_coco_json(annotations)  # parsed once, for the check and the index
    report = check_dataset(annotations, images_dir, deep=False, quiet=quiet, data=data)
    if not report.ok and not skip_bad_items:
        raise ScratchdetError(f"the dataset has errors; {fix}\n{report.format()}")
    skipped: list[dict[str, Any]] = []
    if not report.ok:
        data, skipped = without_bad_items(data, report)
    return CocoIndex.from_json(annotations, data), skipped


def prepare_train_dataset(
    annotations: Path,
    images_dir: Path,
    transforms: Transform,
    *,
    with_masks: bool,
    with_keypoints: bool = False,
    keep_empty_images: bool,
    subset: int | None,
    subset_seed: int,
    skip_bad_items: bool,
    quiet: bool = False,
) -> PreparedDataset:
    """The training set: checked, without empty images unless kept, cut to a nested subset if asked."""
    index, skipped = _checked_index(annotations, images_dir, skip_bad_items, quiet)
    ids = [i for i in index.images if keep_empty_images or index.trainable_annotations(i)]
    if not ids:
        raise ScratchdetError(f"{annotations}: no training image has a usable annotation")
    if subset is not None:
        ids = nested_subset(ids, subset, subset_seed)
    if with_keypoints and not index.categories[0].get("keypoints"):
        raise ScratchdetError(
            f"{annotations}: keypoint training needs the category to list its keypoint names (COCO's "
            "'keypoints' field of the person category); this file has none. Use a person_keypoints file"
        )
    return PreparedDataset(CocoDetection(index, images_dir, ids, transforms, with_masks, with_keypoints), skipped)


def prepare_eval_dataset(
    annotations: Path, images_dir: Path, transforms: Transform | None, *, max_images: int | None, quiet: bool = False
) -> PreparedDataset:
    """The evaluation set: every image (empty ones count for COCO metrics), optionally the first `max_images`."""
    index, skipped = _checked_index(annotations, images_dir, skip_bad_items=False, quiet=quiet, fix=FIX_EVALUATION)
    ids = list(index.images)[:max_images] if max_images else list(index.images)
    return PreparedDataset(CocoDetection(index, images_dir, ids, transforms, with_masks=False), skipped)
