"""Real training runs of a tiny GN Mask R-CNN on the generated data: loss, AP, accounting, resume, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchdet import portable
from scratchdet.config import load_config
from scratchdet.data.batching import TrainingBatches
from scratchdet.data.coco import CocoDetection, CocoIndex
from scratchdet.engine.detection import _train_transforms, train
from scratchdet.engine.rundir import read_metrics
from tests.conftest import final_weights, run_pinned, tiny_training_overrides
from tests.engine.test_faults import KILL_AT
from tests.pinned import assert_pinned

SHORT = ["solver.base_epochs=null", "solver.schedule=0.000444444x", "eval.max_images=12"]  # 160 iterations at 4


def short_run_arguments(data: Path, out: Path) -> list[str]:
    """`scratchdet train` arguments of the pinned short run: the tiny model at the demo preset's own learning rate
    (not the tiny models' 0.04), so that a change to the demo's recipe moves a pinned number."""
    tiny = [o for o in tiny_training_overrides(data) if not o.startswith("solver.base_lr=")]
    return ["train", "--out", str(out), "demo/mask_rcnn", *tiny, *SHORT, "eval.period=80"]


@pytest.fixture(scope="module")
def short_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "short"
    run_pinned(short_run_arguments(synth_dir, run_dir))
    return run_dir


def test_short_training_lowers_the_loss_and_reaches_positive_box_ap(short_run: Path) -> None:
    records = read_metrics(short_run)
    steps = [r for r in records if "total_loss" in r]
    evaluations = [r for r in records if "eval" in r]
    assert [r["iteration"] for r in evaluations] == [80, 160]
    first, last = steps[0], steps[-6:]
    assert sum(r["total_loss"] for r in last) / len(last) < first["total_loss"]
    assert sum(r["loss_objectness"] for r in last) / len(last) < 0.5 * first["loss_objectness"]
    summary = json.loads((short_run / "summary.json").read_text())
    assert set(summary["final"]) == {"bbox", "segm"}
    assert_pinned("short_run box AP", summary["final"]["bbox"]["AP"])
    assert_pinned("short_run mask AP", summary["final"]["segm"]["AP"])
    assert summary["counts"]["images"] == 160 * 4


def test_run_directory_is_self_describing(short_run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "log.txt", "train_image_ids.json", "data.json", "detections.json",
                 "summary.json"):  # fmt: skip
        assert (short_run / name).is_file(), name
    assert list((short_run / "tensorboard").iterdir())
    detections = json.loads((short_run / "detections.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(detections[0])
    machine = json.loads((short_run / "summary.json").read_text())["machine"]
    if portable.unsupported() is None:  # what it computed with: the pinned runs are portable
        assert machine["arithmetic"] == "portable (AVX2 kernels)" and machine["torch_threads"] == 1
    record = read_metrics(short_run)[0]
    for key in (
        "iteration",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
        "lr",
        "seconds_per_iteration",
        "data_seconds",
        "timed_steps",
        "time",
        "images_seen",
        "instances_seen",
        "pixels_seen",
    ):
        assert key in record, key


def test_accounting_equals_a_recount_from_the_dataset_and_transform(short_run: Path, synth_dir: Path) -> None:
    config = load_config(str(short_run / "config.yaml"))
    index = CocoIndex.from_json(synth_dir / "annotations" / "instances_train.json")
    ids = json.loads((short_run / "train_image_ids.json").read_text())
    dataset = CocoDetection(index, synth_dir / "train", ids, _train_transforms(config), with_masks=False)
    batches = iter(TrainingBatches(len(dataset), 4, seed=config.seed, aspect_groups=dataset.aspect_groups()))
    images = instances = pixels = 0
    for _ in range(160):
        for item in next(batches):
            image, target = dataset[item]
            images += 1
            instances += int(target["boxes"].shape[0])
            pixels += image.shape[1] * image.shape[2]
    summary = json.loads((short_run / "summary.json").read_text())
    assert summary["counts"] == {"images": images, "instances": instances, "pixels": pixels}
    logged = [r for r in read_metrics(short_run) if "pixels_seen" in r]
    assert logged[-1]["pixels_seen"] == pixels


def test_accounting_equals_a_count_made_without_the_pipeline(short_run: Path, synth_dir: Path) -> None:
    """Counted from the annotation file alone: 160 iterations of 4 are 8 epochs of the 80 training images, each
    epoch visits every image once, every image keeps its annotations, and its pixels follow the resize rule written
    out here (shorter side to 64, longer at most 96, truncated to whole pixels)."""
    data = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) * 8 == 160 * 4
    annotations_of = {image["id"]: 0 for image in data["images"]}
    for annotation in data["annotations"]:
        annotations_of[annotation["image_id"]] += not annotation.get("iscrowd", 0)
    pixels = 0
    for image in data["images"]:
        scale = min(64 / min(image["height"], image["width"]), 96 / max(image["height"], image["width"]))
        pixels += int(image["height"] * scale) * int(image["width"] * scale)
    summary = json.loads((short_run / "summary.json").read_text())
    assert summary["counts"] == {"images": 8 * len(data["images"]), "instances": 8 * sum(annotations_of.values()),
                                 "pixels": 8 * pixels}  # fmt: skip


def test_resuming_a_finished_run_does_nothing(short_run: Path) -> None:
    before = (short_run / "metrics.jsonl").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "scratchdet", "train", "--resume", str(short_run)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "has already finished" in result.stderr
    assert (short_run / "metrics.jsonl").read_text() == before


def _train_command(synth_dir: Path, out: Path, extra: list[str]) -> list[str]:
    overrides = [
        *tiny_training_overrides(synth_dir),
        "solver.base_epochs=null",
        "solver.schedule=0.000111111x",
        "eval.max_images=4",
        "output.checkpoint_period=5",
        "data.num_workers=1",
        *extra,
    ]
    return [sys.executable, "-m", "scratchdet", "train", "demo/mask_rcnn", *overrides, "--out", str(out)]


def test_sigkill_then_resume_ends_with_the_same_weights(synth_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    reference = tmp_path / "reference"
    subprocess.run(_train_command(synth_dir, reference, []), check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    # SIGKILLed by a planted fault at its 22nd optimizer step: past the checkpoint at 20, before the next.
    planted = [sys.executable, str(KILL_AT), "step", "22", *_train_command(synth_dir, killed, [])[3:]]
    died = subprocess.run(planted, capture_output=True, env=env, check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (killed / "summary.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "scratchdet", "train", "--resume", str(killed)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    ours, theirs = final_weights(killed), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    iterations = [r["iteration"] for r in read_metrics(killed) if "total_loss" in r]
    assert iterations == sorted(set(iterations))  # nothing logged twice after the resume


def test_divergence_stops_with_the_iteration_and_the_loss_term(synth_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        _train_command(synth_dir, tmp_path / "nan", ["solver.base_lr=1e12", "solver.warmup_iters=0"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "training diverged at iteration" in result.stderr
    assert "lower solver.base_lr" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_a_second_run_into_the_same_directory_is_refused(short_run: Path) -> None:
    config = load_config(str(short_run / "config.yaml"))
    from scratchdet.errors import ScratchdetError

    with pytest.raises(ScratchdetError, match="already holds a run"):
        train(config, short_run)


def test_a_run_resumed_on_changed_data_is_refused_and_on_moved_data_continues(synth_dir: Path, tmp_path: Path) -> None:
    import shutil

    from scratchdet.errors import ScratchdetError, TrainingPaused

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data, ignore=shutil.ignore_patterns("classification"))
    overrides = [*tiny_training_overrides(data), "solver.base_epochs=null", "solver.schedule=0.0000333333x",
                 "eval.max_images=4", "eval.period=100"]  # 12 iterations  # fmt: skip
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingPaused):
        train(load_config("demo/mask_rcnn", overrides), run_dir, stop_at=4, quiet=True)
    annotations = data / "annotations" / "instances_train.json"
    original = annotations.read_bytes()
    fewer = json.loads(original)
    fewer["images"] = fewer["images"][:-1]  # as if regenerated with another size
    annotations.write_text(json.dumps(fewer))
    with pytest.raises(ScratchdetError, match=r"training annotations .*instances_train.json changed since it started"):
        train(load_config("demo/mask_rcnn", overrides), run_dir, resume=True, quiet=True)
    assert not (run_dir / "summary.json").exists()
    annotations.write_bytes(original)  # the same data again, moved elsewhere: the same run goes on
    data.rename(tmp_path / "moved")
    moved = [o.replace(str(data), str(tmp_path / "moved")) for o in overrides]
    train(load_config("demo/mask_rcnn", moved), run_dir, resume=True, quiet=True)
    assert json.loads((run_dir / "summary.json").read_text())["iteration"] == 12


def test_last_logged_iteration_reads_the_tail(tmp_path: Path) -> None:
    from scratchdet.engine.rundir import last_logged_iteration

    path = tmp_path / "metrics.jsonl"
    assert last_logged_iteration(tmp_path, default=7) == 7
    path.write_text("".join(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in range(1, 2001)) + '{"iter')
    assert last_logged_iteration(tmp_path) == 2000  # the torn last line is skipped


def test_every_evaluation_is_saved_and_rescores_to_the_logged_ap(short_run: Path) -> None:
    from scratchdet.engine.rundir import evaluation_file
    from scratchdet.evaluation.bootstrap import accumulate, match_detections
    from scratchdet.evaluation.coco import read_evaluation

    config = load_config(str(short_run / "config.yaml"))
    logged = {r["iteration"]: r["eval"] for r in read_metrics(short_run) if "eval" in r}
    for iteration, metrics in logged.items():
        image_ids, detections = read_evaluation(evaluation_file(short_run, iteration))
        assert len(image_ids) == 12
        for task in ("bbox", "segm"):
            table = match_detections(config.data.path(config.data.val_annotations), detections, image_ids, task)
            assert accumulate(table)["AP"][0] == pytest.approx(metrics[task]["AP"], abs=1e-9)


def test_a_real_runs_detections_rescored_by_pycocotools_give_its_final_metrics(short_run: Path) -> None:
    """The run's own detections.json (boxes and masks), scored by pycocotools on the images the run evaluated."""
    from scratchdet.engine.rundir import evaluation_file
    from scratchdet.evaluation.coco import read_evaluation
    from tests.evaluation.test_coco import _pycocotools

    config = load_config(str(short_run / "config.yaml"))
    summary = json.loads((short_run / "summary.json").read_text())
    image_ids, _ = read_evaluation(evaluation_file(short_run, summary["iteration"]))
    for task in ("bbox", "segm"):
        reference = _pycocotools(config.data.path(config.data.val_annotations), short_run / "detections.json", task,
                                 image_ids)  # fmt: skip
        final = summary["final"][task]
        for value, expected in zip(final.values(), reference[: len(final)], strict=True):
            assert value == pytest.approx(expected, abs=1e-4), task


def test_evaluation_batches_hold_images_of_one_size() -> None:
    from scratchdet.engine.detection import evaluation_batches

    sizes = [(128, 96), (96, 128), (128, 96), (128, 96), (96, 128), (128, 96)]
    assert evaluation_batches(sizes, 2) == [[0, 2], [3, 5], [1, 4]]
    assert evaluation_batches(sizes, 3) == [[0, 2, 3], [5], [1, 4]]
    assert evaluation_batches(sizes, 1) == [[i] for i in (0, 2, 3, 5, 1, 4)]


def test_an_images_detections_do_not_depend_on_the_evaluation_batch(short_run: Path, tmp_path: Path) -> None:
    """The validation scenes come in three sizes: in batches of 12 or 1, no image is padded, so each is scored as if
    alone (up to the rounding of batched convolutions)."""
    from scratchdet.engine.detection import evaluate_saved

    paths = {size: tmp_path / f"{size}.json" for size in (1, 12)}
    metrics = {
        size: evaluate_saved(short_run, [f"eval.images_per_batch={size}"], quiet=True, detections=path)
        for size, path in paths.items()
    }
    alone, batched = (json.loads(path.read_text()) for path in paths.values())
    assert len(alone) == len(batched) > 0
    for mine, theirs in zip(batched, alone, strict=True):
        assert (mine["image_id"], mine["category_id"]) == (theirs["image_id"], theirs["category_id"])
        assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=1e-2)
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
    for task in ("bbox", "segm"):
        assert metrics[12][task] == pytest.approx(metrics[1][task], abs=1e-3)


def test_the_final_evaluation_can_use_every_validation_image(synth_dir: Path, tmp_path: Path) -> None:
    from scratchdet.engine.rundir import evaluation_file
    from scratchdet.evaluation.coco import read_evaluation

    overrides = ["solver.base_epochs=null", "solver.schedule=0.0000444444x", "eval.period=8", "eval.max_images=4",
                 "eval.final_all_images=true"]  # fmt: skip  # 16 iterations at 4 images
    train(load_config("demo/mask_rcnn", [*tiny_training_overrides(synth_dir), *overrides]), tmp_path / "r", quiet=True)
    assert len(read_evaluation(evaluation_file(tmp_path / "r", 8))[0]) == 4
    assert len(read_evaluation(evaluation_file(tmp_path / "r", 16))[0]) == 12


def test_evaluations_thin_out_from_the_iteration_period_from_names(synth_dir: Path, tmp_path: Path) -> None:
    """eval.period 2, from iteration 4 on every 4: evaluations at 2 and 4, not at 6, then the final one at 8."""
    overrides = ["solver.base_epochs=null", "solver.schedule=0.0000222222x", "eval.period=2", "eval.max_images=2",
                 "eval.period_from={4: 4}", "solver.warmup_iters=2"]  # fmt: skip  # 8 iterations at 4 images
    train(load_config("demo/mask_rcnn", [*tiny_training_overrides(synth_dir), *overrides]), tmp_path / "r", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "eval" in r] == [2, 4, 8]


def test_predict_draws_and_saves_the_detections_above_the_threshold(
    short_run: Path, synth_dir: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from scratchdet.cli import main

    images = sorted((synth_dir / "val").iterdir())[:3]
    assert main(["predict", str(short_run), *map(str, images), "--out", str(tmp_path / "low"),
                 "--score-threshold", "0.05"]) == 0  # fmt: skip
    predictions = json.loads((tmp_path / "low" / "predictions.json").read_text())
    assert predictions and {p["file_name"] for p in predictions} <= {i.name for i in images}
    for p in predictions:
        assert p["score"] >= 0.05 and len(p["bbox"]) == 4 and set(p["segmentation"]) == {"size", "counts"}
        assert p["image_id"] == [i.name for i in images].index(p["file_name"]) + 1
    first = predictions[0]
    source = next(i for i in images if i.name == first["file_name"])
    drawn = np.asarray(Image.open(tmp_path / "low" / f"{source.stem}.png").convert("RGB")).astype(int)
    original = np.asarray(Image.open(source).convert("RGB")).astype(int)
    x, y, w, h = (int(v) for v in first["bbox"])
    assert drawn.shape == original.shape
    assert (drawn[y : y + h + 1, x : x + w + 1] != original[y : y + h + 1, x : x + w + 1]).any()  # drawn on
    # Above every score: nothing kept, the pictures are the images themselves.
    assert main(["predict", str(short_run), str(images[0]), "--out", str(tmp_path / "high"),
                 "--score-threshold", "1.01"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "high" / "predictions.json").read_text()) == []
    assert (np.asarray(Image.open(tmp_path / "high" / f"{images[0].stem}.png").convert("RGB")) == original * 0 +
            np.asarray(Image.open(images[0]).convert("RGB"))).all()  # fmt: skip


def test_predict_refuses_bad_input_by_name(
    short_run: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchdet.cli import main

    image = sorted((synth_dir / "val").iterdir())[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"")
    (tmp_path / "no_run").mkdir()
    cases = [
        ([str(short_run), str(tmp_path / "missing.png")], "missing.png: no such image file or folder"),
        ([str(short_run), str(tmp_path / "empty")], "empty: no images in this folder"),
        ([str(short_run), str(tmp_path / "broken.png")], "broken.png: cannot decode the image"),
        ([str(tmp_path / "no_run"), str(image)], "no_run has no loadable checkpoint"),
        ([str(short_run), str(image), "--checkpoint", "3"], "no checkpoint of iteration 3; kept: model_"),
    ]
    for arguments, message in cases:
        assert main(["predict", *arguments, "--out", str(tmp_path / "out")]) == 2
        printed = capsys.readouterr().err
        assert message in printed and "Traceback" not in printed, printed
