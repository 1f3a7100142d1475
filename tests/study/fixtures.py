"""Run directories written by the tests themselves, shaped like real ones, for report and verdict tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from faster_coco_eval.core import mask as mask_utils
from PIL import Image

from scratchdet.config import load_config


def write_arm(
    study_dir: Path,
    name: str,
    *,
    init: str,
    schedule: str,
    curve: list[tuple[int, float]],
    final: dict[str, float] | None = None,
    norm: str = "gn",
    subset: int | None = None,
    seed: int = 0,
    train_images: int = 2000,
) -> Path:
    """An arm whose box AP follows `curve`; `final` overrides final metrics (default: from the last point)."""
    run = study_dir / "arms" / name
    run.mkdir(parents=True)
    overrides = [f"model.norm={norm}", f"solver.schedule={schedule}", f"data.train_subset={subset or 'null'}",
                 f"seed={seed}"]  # fmt: skip
    config = load_config("demo/mask_rcnn", overrides).model_dump(mode="json")
    config["model"]["init"] = "scratch" if init == "scratch" else "/somewhere/backbone.pth"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = []
    for iteration, ap in curve:
        records.append(
            {"iteration": iteration, "total_loss": 3.0 / (1 + iteration / 100), "images_seen": iteration * 8}
        )
        metrics = {"AP": ap, "AP50": ap * 1.8, "AP75": ap * 0.9, "APs": ap / 2, "APm": ap, "APl": ap * 1.5}
        records.append({"iteration": iteration, "eval": {"bbox": metrics, "segm": {**metrics, "AP": ap * 0.8}}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    last = records[-1]["eval"]
    if final:
        last = {"bbox": {**last["bbox"], **{k: v for k, v in final.items() if not k.startswith("mask")}},
                "segm": {**last["segm"], "AP": final.get("mask", last["segm"]["AP"])}}  # fmt: skip
    total = curve[-1][0]
    pretrain = {"images": 50_000, "instances": 50_000, "pixels": 50_000 * 64 * 64} if init != "scratch" else None
    summary = {"final": last, "counts": {"images": total * 8, "instances": total * 30, "pixels": total * 8 * 9216},
               "pretrain": pretrain, "schedule": {"total_iterations": total}, "train_images": train_images}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def paper_like_study(study_dir: Path) -> None:
    """Pre-training ahead early, scratch catching up at 3x; less data: scratch behind at 200 images."""
    write_arm(
        study_dir,
        "pretrained_gn_1x_full_seed0",
        init="pretrained",
        schedule="1x",
        curve=[(100, 12.0), (200, 20.0), (300, 24.0)],
        final={"AP50": 44.0, "AP75": 22.0},
    )
    write_arm(
        study_dir,
        "scratch_gn_1x_full_seed0",
        init="scratch",
        schedule="1x",
        curve=[(100, 5.0), (200, 12.0), (300, 18.0)],
        final={"AP50": 34.0, "AP75": 18.0},
    )
    write_arm(
        study_dir,
        "pretrained_gn_3x_full_seed0",
        init="pretrained",
        schedule="3x",
        curve=[(100, 12.0), (300, 22.0), (600, 27.0), (900, 30.0)],
        final={"AP50": 52.0, "AP75": 30.0},
    )
    write_arm(
        study_dir,
        "scratch_gn_3x_full_seed0",
        init="scratch",
        schedule="3x",
        curve=[(100, 5.0), (300, 16.0), (600, 25.0), (900, 29.5)],
        final={"AP50": 50.0, "AP75": 30.5},
    )


def write_pretraining(study_dir: Path, name: str, *, iterations: int, top1: float | None) -> Path:
    """A pre-training run directory; `top1=None` leaves it unfinished (no summary.json yet)."""
    run = study_dir / "pretrain" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(load_config("demo/mask_rcnn").model_dump(mode="json")))
    records = [{"iteration": i, "total_loss": 1.0, "images_seen": i * 64} for i in range(20, iterations + 1, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if top1 is not None:
        summary = {"iteration": iterations, "final": {"classification": {"top1": top1, "top5": top1 + 20}},
                   "counts": {"images": iterations * 64, "instances": iterations * 64, "pixels": 0}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    return run


# ------------------------------------------------------------------------- arms with saved, scorable evaluations

VAL_IMAGES = 120


def write_ground_truth(study_dir: Path, images: int = VAL_IMAGES, names: tuple[str, str] = ("a", "b")) -> Path:
    """A validation set of `images` 64 x 64 images with 1-3 boxes (and box-shaped masks) of two categories."""
    rng = np.random.default_rng(1234)
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        entries.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64, "height": 64})
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(12, 30, 2)
            x, y = rng.uniform(0, 64 - w), rng.uniform(0, 64 - h)
            category = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0,
                                "segmentation": _box_rle([x, y, w, h])})  # fmt: skip
    data = {"images": entries, "annotations": annotations,
            "categories": [{"id": 1, "name": names[0]}, {"id": 2, "name": names[1]}]}  # fmt: skip
    path = study_dir / "data" / "val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_val_images(study_dir: Path) -> Path:
    """The validation images of `write_ground_truth` as PNG files (data/val/<id>.png): a flat colour per image with
    each object's box filled, so a picture differs where something is drawn on it."""
    ground_truth = json.loads((study_dir / "data" / "val.json").read_text())
    folder = study_dir / "data" / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for image in ground_truth["images"]:
        pixels = np.full((64, 64, 3), 40 + image["id"] % 150, np.uint8)
        for annotation in ground_truth["annotations"]:
            if annotation["image_id"] == image["id"]:
                x, y, w, h = (round(v) for v in annotation["bbox"])
                pixels[y : y + h, x : x + w] = (200, 60 + 80 * annotation["category_id"], 90)
        Image.fromarray(pixels).save(folder / image["file_name"])
    return folder


def _box_rle(box: list[float]) -> dict[str, Any]:
    x, y, w, h = box
    mask = np.zeros((64, 64), np.uint8)
    mask[max(0, round(y)) : round(y + h), max(0, round(x)) : round(x + w)] = 1
    rle = mask_utils.encode(np.asfortranarray(mask[:, :, None]))[0]
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def scored_detections(ground_truth: dict[str, Any], quality: float, jitter: float, mask_jitter: float) -> list[Any]:
    """Detections that find each ground truth with probability `quality` (the same draw for every arm, so a better
    arm finds a superset), boxes off by `jitter` and masks by `mask_jitter` of their size, one false positive per
    image. Everything but `quality` and the jitters is fixed: arms differ only in what those say."""
    detections = []
    for annotation in ground_truth["annotations"]:
        rng = np.random.default_rng([annotation["id"], 7])
        found, score, offsets = rng.random(), rng.uniform(0.5, 1.0), rng.normal(0, 1, 4)
        if found >= quality:
            continue
        x, y, w, h = annotation["bbox"]
        box = [x + offsets[0] * jitter * w, y + offsets[1] * jitter * h, w * (1 + offsets[2] * jitter),
               h * (1 + offsets[3] * jitter)]  # fmt: skip
        mask_box = [x + offsets[0] * mask_jitter * w, y + offsets[1] * mask_jitter * h, w, h]
        detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                           "bbox": box, "score": float(score), "segmentation": _box_rle(mask_box)})  # fmt: skip
    for image in ground_truth["images"]:
        rng = np.random.default_rng([image["id"], 8])
        box = [*rng.uniform(0, 40, 2), 20.0, 20.0]
        detections.append({"image_id": image["id"], "category_id": int(rng.integers(1, 3)), "bbox": box,
                           "score": float(rng.uniform(0, 0.5)), "segmentation": _box_rle(box)})  # fmt: skip
    return detections


def write_scored_arm(
    study_dir: Path,
    name: str,
    *,
    init: str,
    schedule: str,
    curve: list[tuple[int, float]],
    jitter: float = 0.05,
    mask_jitter: float | None = None,
    norm: str = "gn",
    subset: int | None = None,
    seed: int = 0,
    pretrain_pixels: int = 4_000_000,
    finished: bool = True,
) -> Path:
    """An arm whose evaluations at `curve`'s iterations find `quality` of the ground truths (see
    `scored_detections`), saved and scored for real; the last point is the final evaluation. Training sees 8 images
    of 64 x 64 pixels per iteration; a pre-trained arm adds `pretrain_pixels`. Warm-up: 10 iterations."""
    from scratchdet.engine.rundir import evaluation_file
    from scratchdet.evaluation.coco import save_evaluation, score_detections

    annotations = study_dir / "data" / "val.json"
    if not annotations.is_file():
        write_ground_truth(study_dir)
    ground_truth = json.loads(annotations.read_text())
    image_ids = [i["id"] for i in ground_truth["images"]]
    run = study_dir / "arms" / name
    run.mkdir(parents=True)
    overrides = [f"model.norm={norm}", f"solver.schedule={schedule}", f"data.train_subset={subset or 'null'}",
                 f"seed={seed}", f"data.root={study_dir / 'data'}", "data.val_annotations=val.json",
                 "solver.warmup_iters=10"]  # fmt: skip
    config = load_config("demo/mask_rcnn", overrides).model_dump(mode="json")
    config["model"]["init"] = "scratch" if init == "scratch" else "/somewhere/backbone.pth"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records: list[dict[str, Any]] = []
    for iteration, quality in curve:
        detections = scored_detections(ground_truth, quality, jitter, jitter if mask_jitter is None else mask_jitter)
        save_evaluation(evaluation_file(run, iteration), image_ids, detections)
        if finished:  # the final evaluation's detections, as training writes them
            (run / "detections.json").write_text(json.dumps(detections))
        metrics = score_detections(annotations, detections, image_ids, ("bbox", "segm"))
        records.append({"iteration": iteration, "total_loss": 1.0, "seconds_per_iteration": 0.5})
        records.append({"iteration": iteration, "eval": metrics})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        total = curve[-1][0]
        pretrain = {"images": 1000, "instances": 1000, "pixels": pretrain_pixels} if init != "scratch" else None
        summary = {"final": records[-1]["eval"], "pretrain": pretrain, "train_images": subset or 2000,
                   "counts": {"images": total * 8, "instances": total * 16, "pixels": total * 8 * 64 * 64},
                   "schedule": {"total_iterations": total, "steps": [round(total * 2 / 3), round(total * 8 / 9)],
                                "warmup_iters": 10}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    return run
