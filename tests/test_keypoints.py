"""Keypoint R-CNN end to end on generated stick figures: data, flips that swap sides, training, OKS keypoint AP
equal to pycocotools'."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from scratchdet.cli import main
from scratchdet.data.synthetic_keypoints import FLIP_INDEX, KEYPOINT_NAMES
from scratchdet.data.transforms import HorizontalFlipSwappingKeypoints, keypoint_flip_index
from scratchdet.engine.rundir import read_metrics
from tests.conftest import run_pinned, tiny_training_overrides
from tests.pinned import assert_pinned

# 200 iterations of 4 images on 16 images, scored on those same images: enough for OKS matches to appear.
SHORT = ["data.min_size=[112]", "data.max_size=128", "data.test_size=112", "model.keypoint_head_conv_dim=32",
         "model.keypoint_head_convs=4", "solver.base_epochs=null", "solver.schedule=0.000555556x",
         "solver.base_lr=0.08", "eval.max_images=16", "output.log_period=25",
         "data.val_annotations=annotations/person_keypoints_train.json", "data.val_images=train"]  # fmt: skip


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("people") / "data"
    assert main(["data", "synth", "--kind", "people", "--out", str(out), "--train-images", "16", "--val-images",
                 "2", "--image-size", "128", "--workers", "2"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def keypoint_run(people: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("kp") / "run"
    run_pinned(["train", "--out", str(run), "demo/keypoint_rcnn", *tiny_training_overrides(people), *SHORT])
    return run


def test_generated_people_are_coco_person_keypoints(people: Path) -> None:
    data = json.loads((people / "annotations" / "person_keypoints_train.json").read_text())
    assert data["categories"][0]["name"] == "person" and data["categories"][0]["keypoints"] == KEYPOINT_NAMES
    for annotation in data["annotations"]:
        keypoints = annotation["keypoints"]
        assert len(keypoints) == 51 and annotation["num_keypoints"] == sum(v > 0 for v in keypoints[2::3])
        x, y, w, h = annotation["bbox"]
        for kx, ky, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3], strict=True):
            if v == 2:  # a visible joint lies on the figure, so within a pixel or two of its box
                assert x - 2 <= kx <= x + w + 2 and y - 2 <= ky <= y + h + 2


def test_a_flip_mirrors_positions_and_swaps_left_and_right() -> None:
    assert keypoint_flip_index(KEYPOINT_NAMES) == FLIP_INDEX
    points = torch.zeros(1, 17, 2)
    points[0, 9] = torch.tensor([10.0, 20.0])  # left wrist, on the image's left
    visibility = torch.zeros(1, 17)
    visibility[0, 9] = 2
    image = tv_tensors.Image(torch.zeros(3, 30, 40, dtype=torch.uint8))
    target = {"keypoints": tv_tensors.KeyPoints(points, canvas_size=(30, 40)), "keypoint_visibility": visibility}
    _, flipped = HorizontalFlipSwappingKeypoints(p=1.0, flip_index=FLIP_INDEX)(image, target)
    right_wrist = flipped["keypoints"][0, 10]
    assert right_wrist[0] > 25 and right_wrist[1] == 20  # mirrored to the right half
    assert flipped["keypoint_visibility"][0, 10] == 2 and flipped["keypoint_visibility"][0, 9] == 0


def test_keypoint_rcnn_trains_with_finite_losses_and_reaches_keypoint_ap(keypoint_run: Path) -> None:
    records = [r for r in read_metrics(keypoint_run) if "loss_keypoint" in r]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in records)
    assert records[-1]["loss_keypoint"] < records[0]["loss_keypoint"]
    final = json.loads((keypoint_run / "summary.json").read_text())["final"]
    print(f"keypoint AP {final['keypoints']['AP']:.2f} (AP50 {final['keypoints']['AP50']:.2f}), "
          f"box AP {final['bbox']['AP']:.2f}")  # fmt: skip
    assert set(final) == {"bbox", "keypoints"}
    assert_pinned("keypoint_run keypoint AP", final["keypoints"]["AP"])
    assert_pinned("keypoint_run box AP", final["bbox"]["AP"])


def test_keypoint_ap_equals_pycocotools(keypoint_run: Path, people: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    final = json.loads((keypoint_run / "summary.json").read_text())["final"]["keypoints"]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(people / "annotations" / "person_keypoints_train.json"))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(keypoint_run / "detections.json")), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    theirs = dict(zip(["AP", "AP50", "AP75", "APm", "APl"], evaluator.stats[:5], strict=True))
    for name, value in final.items():
        assert round(value / 100, 4) == round(float(theirs[name]), 4), name


def test_predict_draws_keypoints(keypoint_run: Path, people: Path, tmp_path: Path) -> None:
    images = sorted((people / "val").iterdir())
    assert (
        main(["predict", str(keypoint_run), str(people / "val"), "--out", str(tmp_path), "--score-threshold", "0"]) == 0
    )
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert predictions and all(len(p["keypoints"]) == 17 * 3 for p in predictions)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{i.stem}.png" for i in images)
