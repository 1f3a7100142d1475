"""COCO evaluation speed: scratchdet's evaluator (faster-coco-eval) against pycocotools on the same results file.

    python bench/eval.py                 # 3000 images, about 2 minutes on 2 cores
    python bench/eval.py --images 500

The ground truth (polygon masks, 6 categories, 3–12 objects an image) and a results file of detections with RLE
masks (jittered true objects plus false positives, with scores) are generated under runs/bench/eval/; no image is
needed. Both evaluators score box and mask AP from the files, loading included, alternating in `--rounds` rounds;
the AP values of both are printed side by side and must agree to 4 decimals.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import common
from scratchdet.evaluation.coco import read_detections, score_detections

OUT = common.REPO / "runs" / "bench" / "eval"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list[float]:
    """A convex-ish polygon of 8 points inside the box."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    radius = rng.uniform(0.6, 1.0, 8)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return [round(float(v), 2) for pair in zip(xs, ys, strict=True) for v in pair]


def make_files(images: int, seed: int = 0) -> tuple[Path, Path]:
    """Ground truth and detections for `images` 640×480 images; reused when already there."""
    from faster_coco_eval.core import mask as mask_utils

    annotations_path, results_path = OUT / f"gt_{images}.json", OUT / f"dt_{images}.json"
    if annotations_path.is_file() and results_path.is_file():
        return annotations_path, results_path
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    gt: dict[str, Any] = {"images": [], "annotations": [],
                          "categories": [{"id": c, "name": f"shape{c}"} for c in range(1, 7)]}  # fmt: skip
    detections = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.png"})
        for _ in range(rng.integers(3, 13)):
            w, h = rng.uniform(8, 300, 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.integers(1, 7))
            polygon = _polygon(rng, x, y, w, h)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": category,
                                      "bbox": [x, y, w, h], "area": float(w * h * 0.7), "iscrowd": 0,
                                      "segmentation": [polygon]})  # fmt: skip
            if rng.random() < 0.8:  # found, with some error
                detections.append(_detection(rng, image_id, category, x, y, w, h, 0.05, width, height, mask_utils))
        for _ in range(rng.integers(0, 6)):  # false positives
            w, h = rng.uniform(8, 300, 2)
            detections.append(_detection(rng, image_id, int(rng.integers(1, 7)), rng.uniform(0, width - w),
                                         rng.uniform(0, height - h), w, h, 0.0, width, height, mask_utils))  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    annotations_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(detections))
    return annotations_path, results_path


def _detection(rng: np.random.Generator, image_id: int, category: int, x: float, y: float, w: float, h: float,
               jitter: float, width: int, height: int, mask_utils: Any) -> dict[str, Any]:  # fmt: skip
    x, y = x + rng.normal(0, jitter * w), y + rng.normal(0, jitter * h)
    w, h = w * rng.uniform(1 - jitter, 1 + jitter), h * rng.uniform(1 - jitter, 1 + jitter)
    rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(rng, x, y, w, h)], height, width))
    return {"image_id": image_id, "category_id": category, "bbox": [round(v, 2) for v in (x, y, w, h)],
            "score": round(float(rng.uniform(0.05, 1.0)), 4),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}  # fmt: skip


def ours(annotations: Path, results: Path) -> dict[str, list[float]]:
    gt_ids = [image["id"] for image in json.loads(annotations.read_text())["images"]]
    scores = score_detections(annotations, read_detections(results), gt_ids, ("bbox", "segm"))
    return {task: [scores[task][name] / 100 for name in METRICS] for task in scores}


def pycocotools(annotations: Path, results: Path) -> dict[str, list[float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress and tables
        ground_truth = COCO(str(annotations))
        scores = {}
        for task in ("bbox", "segm"):
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(results)), task)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            scores[task] = [float(v) for v in evaluator.stats[:6]]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=common.REPO / "runs" / "bench" / "eval.json")
    args = parser.parse_args()
    annotations, results = make_files(args.images)
    detections = len(json.loads(results.read_text()))
    seconds: dict[str, list[float]] = {"scratchdet": [], "pycocotools": []}
    scores: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.rounds):
        for name in sorted(seconds, reverse=round_ % 2 == 1):
            started = time.perf_counter()
            scores[name] = (ours if name == "scratchdet" else pycocotools)(annotations, results)
            seconds[name].append(time.perf_counter() - started)
    ours_s, theirs_s = common.median(seconds["scratchdet"]), common.median(seconds["pycocotools"])
    rows = [{"task": task, "metric": metric, "scratchdet": scores["scratchdet"][task][i],
             "pycocotools": scores["pycocotools"][task][i],
             "equal_to_4_decimals": round(scores["scratchdet"][task][i], 4) == round(scores["pycocotools"][task][i], 4)}
            for task in ("bbox", "segm") for i, metric in enumerate(METRICS)]  # fmt: skip
    print(common.table(rows, ["task", "metric", "scratchdet", "pycocotools", "equal_to_4_decimals"]))
    timing = [{"evaluator": "scratchdet (faster-coco-eval)", "seconds": ours_s, "speedup": theirs_s / ours_s},
              {"evaluator": "pycocotools", "seconds": theirs_s, "speedup": 1.0}]  # fmt: skip
    print(f"\n{args.images} images, {detections} detections with masks; box and mask AP, loading included\n")
    print(common.table(timing, ["evaluator", "seconds", "speedup"]))
    print("\nall AP values equal to 4 decimals:", all(row["equal_to_4_decimals"] for row in rows))
    common.write_json(args.out, "eval", rows, timing=timing, images=args.images, detections=detections)


if __name__ == "__main__":
    main()
