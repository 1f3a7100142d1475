"""Run directories written by the tests themselves, shaped like real ones, for report and verdict tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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
