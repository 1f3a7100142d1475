import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from faster_coco_eval.core import mask as mask_utils

from scratchdet.evaluation.coco import CocoEvaluator, detections_of_image, read_detections, score_detections


def _noisy_detections(annotations: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Ground truth with jittered boxes, shifted masks, random scores, some misses and some false positives."""
    rng = np.random.default_rng(seed)
    images = {i["id"]: i for i in annotations["images"]}
    detections = []
    for annotation in annotations["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        image = images[annotation["image_id"]]
        mask = mask_utils.decode(annotation["segmentation"])
        mask = np.roll(mask, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        x, y, w, h = annotation["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        category = annotation["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 7))
        rle = mask_utils.encode(np.asfortranarray(mask[:, :, None]))[0]
        detections.append(
            {
                "image_id": image["id"],
                "category_id": category,
                "score": float(rng.random()),
                "bbox": [float(v) for v in np.add([x, y, w, h], jitter)],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            }
        )
    for image in annotations["images"]:
        for _ in range(int(rng.integers(0, 3))):
            x0, y0 = rng.uniform(0, image["width"] - 10), rng.uniform(0, image["height"] - 10)
            mask = np.zeros((image["height"], image["width"]), np.uint8)
            mask[int(y0) : int(y0) + 8, int(x0) : int(x0) + 8] = 1
            rle = mask_utils.encode(np.asfortranarray(mask[:, :, None]))[0]
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, 7)),
                    "score": float(rng.random() * 0.5),
                    "bbox": [float(int(x0)), float(int(y0)), 8.0, 8.0],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
    return detections


def _pycocotools(annotations: Path, results: Path, task: str, image_ids: list[int] | None = None) -> list[float]:
    """pycocotools' 12 COCO numbers (x 100) for a results file, on `image_ids` (all images when None)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(str(annotations))
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(results)), task)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(v) * 100 for v in evaluator.stats]


def test_ap_equals_pycocotools_on_the_same_results_file(synth_dir: Path, tmp_path: Path) -> None:
    annotations = synth_dir / "annotations" / "instances_train.json"
    data = json.loads(annotations.read_text())
    results = tmp_path / "detections.json"
    results.write_text(json.dumps(_noisy_detections(data)))
    ours = score_detections(annotations, read_detections(results), [i["id"] for i in data["images"]], ("bbox", "segm"))
    for task in ("bbox", "segm"):
        reference = _pycocotools(annotations, results, task)
        assert 5 < reference[0] < 95  # a non-trivial score, so equality means something
        for value, expected in zip(ours[task].values(), reference[: len(ours[task])], strict=True):
            assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_ap_equals_pycocotools_with_crowds_on_an_image_subset_with_a_crowded_image(
    synth_dir: Path, tmp_path: Path, task: str
) -> None:
    """What the demo scores: the first images of the set only (eval.max_images); and what COCO holds: crowd regions,
    and an image with more than 100 detections (only the 100 best count)."""
    from tests.evaluation.test_bootstrap import _with_crowds_and_a_crowded_image

    data, detections = _with_crowds_and_a_crowded_image(synth_dir / "annotations" / "instances_train.json",
                                                        tmp_path / "gt.json")  # fmt: skip
    assert any(a["iscrowd"] for a in data["annotations"])
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    subset = [i["id"] for i in data["images"]][:40]
    crowded = detections[-1]["image_id"]
    assert crowded in subset and sum(d["image_id"] == crowded for d in detections) > 100
    ours = score_detections(tmp_path / "gt.json", read_detections(tmp_path / "detections.json"), subset, (task,))
    reference = _pycocotools(tmp_path / "gt.json", tmp_path / "detections.json", task, subset)
    assert 5 < reference[0] < 95
    for value, expected in zip(ours[task].values(), reference[: len(ours[task])], strict=True):
        assert value == pytest.approx(expected, abs=1e-4)


def test_no_detection_gives_zero_not_nan(synth_dir: Path) -> None:
    results = score_detections(synth_dir / "annotations" / "instances_val.json", [], [1, 2], ("bbox",))
    assert results["bbox"] == dict.fromkeys(results["bbox"], 0.0)


def test_model_outputs_become_coco_results(synth_dir: Path) -> None:
    masks = torch.zeros(2, 1, 20, 30)
    masks[0, 0, 2:6, 3:9] = 0.9
    masks[1, 0, 10:12, 10:20] = 0.4  # below the 0.5 threshold: an empty mask
    output = {
        "boxes": torch.tensor([[3.0, 2, 9, 6], [10, 10, 20, 12]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
    }
    results = detections_of_image(7, output, {1: 11, 2: 22})
    assert [r["category_id"] for r in results] == [11, 22]
    assert results[0]["bbox"] == [3.0, 2.0, 6.0, 4.0]
    assert mask_utils.area(results[0]["segmentation"]) == 24 and mask_utils.area(results[1]["segmentation"]) == 0
    evaluator = CocoEvaluator(synth_dir / "annotations" / "instances_val.json", [7], {1: 1, 2: 2}, ("bbox",))
    evaluator.process([{"image_id": 7}], [output])
    assert len(evaluator.detections) == 2
