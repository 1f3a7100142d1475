"""Re-accumulating per-image COCO matches: identical to COCO's own AP, and to COCO's AP on a resampled copy."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scratchdet.evaluation.bootstrap import accumulate, match_detections, resample_weights
from scratchdet.evaluation.coco import score_detections
from tests.evaluation.test_coco import _noisy_detections


def _with_crowds_and_a_crowded_image(annotations: Path, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The generated set with every 7th object a crowd region, and one image given 150 detections."""
    data = json.loads(annotations.read_text())
    for annotation in data["annotations"]:
        if annotation["id"] % 7 == 0:
            annotation["iscrowd"] = 1
    out.write_text(json.dumps(data))
    detections = _noisy_detections(data, seed=3)
    first = data["annotations"][0]
    rng = np.random.default_rng(0)
    for _ in range(150):  # more than COCO's 100 per image: only the 100 best count
        x, y, w, h = first["bbox"]
        detections.append({"image_id": first["image_id"], "category_id": first["category_id"],
                           "score": float(rng.random()), "segmentation": first["segmentation"],
                           "bbox": [x + float(rng.normal(0, 2)), y, w, h]})  # fmt: skip
    return data, detections


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_matching_once_gives_cocos_ap_on_an_image_subset_with_crowds(
    synth_dir: Path, tmp_path: Path, task: str
) -> None:
    data, detections = _with_crowds_and_a_crowded_image(synth_dir / "annotations" / "instances_train.json",
                                                        tmp_path / "gt.json")  # fmt: skip
    subset = [i["id"] for i in data["images"]][::2]  # every other image, as eval.max_images scores a part
    expected = score_detections(tmp_path / "gt.json", detections, subset, (task,))[task]
    ours = accumulate(match_detections(tmp_path / "gt.json", detections, subset, task))
    assert 5 < expected["AP"] < 95
    for metric in ("AP", "AP50", "AP75"):
        assert ours[metric][0] == pytest.approx(expected[metric], abs=1e-9)


def test_a_resample_equals_coco_on_a_copy_holding_each_image_as_often_as_drawn(synth_dir: Path, tmp_path: Path) -> None:
    data, detections = _with_crowds_and_a_crowded_image(synth_dir / "annotations" / "instances_train.json",
                                                        tmp_path / "gt.json")  # fmt: skip
    ids = sorted(i["id"] for i in data["images"])
    weights = resample_weights(len(ids), 3, seed=5)
    table = match_detections(tmp_path / "gt.json", detections, ids, "bbox")
    ours = accumulate(table, weights)
    for row in range(3):
        copy, copied = _copy_with_repeats(data, detections, ids, weights[row])
        (tmp_path / "copy.json").write_text(json.dumps(copy))
        expected = score_detections(tmp_path / "copy.json", copied, [i["id"] for i in copy["images"]], ("bbox",))
        for metric in ("AP", "AP50", "AP75"):
            assert ours[metric][row] == pytest.approx(expected["bbox"][metric], abs=1e-9)
    assert len({round(float(v), 6) for v in ours["AP"]}) == 3  # the resamples differ


def _copy_with_repeats(data: dict[str, Any], detections: list[dict[str, Any]], ids: list[int],
                       counts: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    images = {i["id"]: i for i in data["images"]}
    images_out, annotations_out, detections_out = [], [], []
    for image_id, count in zip(ids, counts.astype(int), strict=True):
        for _ in range(count):
            new_id = len(images_out) + 1
            images_out.append({**images[image_id], "id": new_id})
            annotations_out += [
                {**a, "id": len(annotations_out) + k + 1, "image_id": new_id}
                for k, a in enumerate(a for a in data["annotations"] if a["image_id"] == image_id)
            ]
            detections_out += [{**d, "image_id": new_id} for d in detections if d["image_id"] == image_id]
    return {**data, "images": images_out, "annotations": annotations_out}, detections_out


def test_no_detections_score_zero_and_resamples_are_seeded(synth_dir: Path) -> None:
    annotations = synth_dir / "annotations" / "instances_val.json"
    ids = [i["id"] for i in json.loads(annotations.read_text())["images"]]
    assert accumulate(match_detections(annotations, [], ids, "bbox"))["AP"][0] == 0.0
    assert np.array_equal(resample_weights(10, 4, seed=1), resample_weights(10, 4, seed=1))
    assert resample_weights(10, 4, seed=1).sum(axis=1).tolist() == [10.0] * 4


def test_precision_at_recall_thresholds_is_coco_searchsorted_row_by_row():
    """The vectorized lookup equals COCO's per-row searchsorted, including recalls exactly on a threshold, rows that
    never reach some thresholds, and runs of equal recall."""
    from scratchdet.evaluation.bootstrap import RECALL_THRESHOLDS, _at_recall_thresholds

    rng = np.random.default_rng(0)
    for detections in (1, 7, 40):
        steps = rng.choice([0.0, 0.01, 0.02, 0.05, 1 / 3, 0.1], size=(6, 10, detections))
        recall = np.minimum(np.cumsum(steps, axis=2), rng.choice([0.55, 1.0], size=(6, 10, 1)))
        precision = rng.random((6, 10, detections))
        expected = np.zeros((6, 10, len(RECALL_THRESHOLDS)))
        for r in range(6):
            for t in range(10):
                found = np.searchsorted(recall[r, t], RECALL_THRESHOLDS, side="left")
                inside = found < detections
                expected[r, t, inside] = precision[r, t, found[inside]]
        assert np.array_equal(_at_recall_thresholds(recall, precision), expected)
