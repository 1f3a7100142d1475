"""COCO box, mask and keypoint AP with faster-coco-eval (pycocotools-compatible), as reset / process / evaluate.

Results are on a 0–100 scale: {"bbox": {"AP": …, "AP50": …, "AP75": …, "APs": …, "APm": …, "APl": …},
"segm": {…}, "keypoints": {"AP", "AP50", "AP75", "APm", "APl"} (OKS with COCO's per-joint sigmas)}; 0, with a
warning, when there is no detection at all. Detections are kept in the COCO results format (boxes XYWH in image
pixels, scores, category ids, masks as compressed RLE, keypoints as x, y, v triples) and can be written as
`detections.json`, which any COCO tool can re-score.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_utils

from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write_bytes, atomic_write_text

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")  # COCO has no small people for keypoints
MASK_THRESHOLD = 0.5
log = logging.getLogger(__name__)


def _silent(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval prints its tables through this; scratchdet reports the numbers itself."""


def detections_of_image(
    image_id: int, output: dict[str, torch.Tensor], category_of_label: dict[int, int]
) -> list[dict[str, Any]]:
    """One image's model output (boxes XYXY, scores, labels, optional masks (N, 1, H, W)) as COCO results."""
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy().tolist()
    labels = output["labels"].detach().cpu().numpy().tolist()
    rles: list[Any] = [None] * len(scores)
    if "masks" in output and len(scores):
        binary = (output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    all_keypoints: list[Any] = (
        output["keypoints"].detach().cpu().tolist() if "keypoints" in output else [None] * len(scores)
    )
    for (x0, y0, x1, y1), score, label, rle, keypoints in zip(boxes, scores, labels, rles, all_keypoints, strict=True):
        result: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": category_of_label[int(label)],
            "bbox": [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)],
            "score": round(float(score), 5),
        }
        if rle is not None:
            result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        if keypoints is not None:  # x, y, 1 per joint (COCO's OKS ignores the third value)
            result["keypoints"] = [round(float(v), 2) for x, y, _ in keypoints for v in (x, y, 1.0)]
        results.append(result)
    return results


def score_detections(
    annotations: Path | str, detections: list[dict[str, Any]], image_ids: Sequence[int], tasks: Sequence[str]
) -> dict[str, dict[str, float]]:
    """COCO metrics (0–100) of `detections` on `image_ids` for each task ("bbox", "segm")."""
    if not detections:  # COCO would find nothing to load; a model that detects nothing scores 0, not NaN
        log.warning("no detections at all: every AP is 0")
        return {task: dict.fromkeys(_metric_names(task), 0.0) for task in tasks}
    ground_truth = COCO(str(annotations), print_function=_silent)
    # Loaded once for every task (as each task would load them alike); loadRes adds top-level fields to each
    # detection, so it gets shallow copies and the caller's list stays as it was.
    predicted = ground_truth.loadRes([dict(detection) for detection in detections])
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        evaluator = COCOeval_faster(ground_truth, predicted, iouType=task, print_function=_silent)
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        names = _metric_names(task)
        results[task] = {name: float(value) * 100 for name, value in zip(names, evaluator.stats, strict=False)}
    return results


def _metric_names(task: str) -> tuple[str, ...]:
    return KEYPOINT_METRICS if task == "keypoints" else METRICS


def save_evaluation(path: Path, image_ids: Sequence[int], detections: list[dict[str, Any]]) -> None:
    """One evaluation's input, gzipped JSON: the scored image ids and their detections (COCO results format).

    Kept for every evaluation of a run so that a report can put intervals on any point of a curve by resampling
    the images (`evaluation/bootstrap.py`) without running the model again.
    """
    text = json.dumps({"image_ids": [int(i) for i in image_ids], "detections": detections}, separators=(",", ":"))
    atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))


def read_evaluation(path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """(image ids, detections) of a file written by `save_evaluation`."""
    try:
        data = json.loads(gzip.decompress(Path(path).read_bytes()))
        return [int(i) for i in data["image_ids"]], list(data["detections"])
    except (OSError, EOFError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ScratchdetError(f"{path}: cannot read this saved evaluation ({type(exc).__name__}: {exc})") from None


def read_detections(path: Path) -> list[dict[str, Any]]:
    try:
        detections = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScratchdetError(f"{path}: cannot read detections ({exc})") from None
    except RecursionError:
        raise ScratchdetError(f"{path}: JSON nested too deeply to be a COCO results file") from None
    if not isinstance(detections, list):
        raise ScratchdetError(f"{path}: a COCO results file is a JSON list of detections")
    return detections


class CocoEvaluator:
    """Collects detections image by image, then scores them against the annotation file."""

    def __init__(
        self, annotations: Path, image_ids: Sequence[int], category_of_label: dict[int, int], tasks: Sequence[str]
    ) -> None:
        self.annotations = Path(annotations)
        self.image_ids = list(image_ids)
        self.category_of_label = category_of_label
        self.tasks = tuple(tasks)
        self.detections: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.detections = []

    def process(self, targets: Sequence[dict[str, Any]], outputs: Sequence[dict[str, torch.Tensor]]) -> None:
        for target, output in zip(targets, outputs, strict=True):
            self.detections += detections_of_image(target["image_id"], output, self.category_of_label)

    def evaluate(self) -> dict[str, dict[str, float]]:
        return score_detections(self.annotations, self.detections, self.image_ids, self.tasks)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.detections, separators=(",", ":")))
