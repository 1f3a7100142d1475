"""A study's results, read from its run directories alone (config.yaml, metrics.jsonl, summary.json).

Nothing here imports trainer state: a report can be rebuilt anywhere the run directories are copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from scratchdet.engine import rundir
from scratchdet.storage import read_json_file
from scratchdet.study.spec import INITS_FILE, full_training_set


@dataclass
class ArmResult:
    """One finished (or partly finished) arm: its axis values and what it logged."""

    name: str
    init: str  # "scratch" | "pretrained" (any init that is not scratch)
    norm: str
    schedule: str
    multiplier: float
    train_subset: int | None
    seed: int
    total_iterations: int
    train_images: int
    evaluations: list[tuple[int, dict[str, dict[str, float]]]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    final: dict[str, dict[str, float]] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    pretrain_counts: dict[str, int] | None = None
    run_dir: Path | None = None
    val_annotations: Path | None = None
    val_images: Path | None = None
    warmup_iters: int = 0
    steps: tuple[int, ...] = ()
    seconds_per_iteration: float = math.nan  # median of the logged steps (for cost estimates)
    init_source: str = "scratch"  # model.init: "scratch" or the weight file the arm started from
    init_name: str = ""  # the study's name of the init: scratch, pretrained, or a weight file's name
    pretrain_cost_known: bool = True  # False: a weight file of unknown pre-training cost
    final_on_more_images: bool = False  # the final evaluation scores all validation images, the periodic ones fewer

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def total_pixels(self) -> int:
        """Pixels seen in detection training plus in the pre-training it started from (the paper's total cost)."""
        return int(self.counts.get("pixels", 0)) + int((self.pretrain_counts or {}).get("pixels", 0))

    def metric(self, task: str, name: str) -> float:
        return (self.final or {}).get(task, {}).get(name, math.nan)

    def curve(self, task: str, name: str = "AP") -> list[tuple[int, float]]:
        return [(i, r[task][name]) for i, r in self.evaluations if task in r]


def read_arm(run_dir: Path, inits: dict[str, dict[str, Any]] | None = None) -> ArmResult | None:
    """The results of one run directory, or None when it has not started. `inits` (a study's inits.json) names the
    weight files used as inits and their pre-training counts (None: unknown)."""
    if not rundir.is_run(run_dir):
        return None
    config = rundir.read_config_mapping(run_dir)
    model, solver, data = config["model"], config["solver"], config["data"]
    records = rundir.read_metrics(run_dir)
    summary = rundir.read_summary(run_dir) or {}
    schedule = summary.get("schedule", {})
    step_seconds = sorted(r["seconds_per_iteration"] for r in records if "seconds_per_iteration" in r)
    val, val_images = Path(data["val_annotations"]), Path(data.get("val_images", "val"))
    init_name = "scratch" if model["init"] == "scratch" else "pretrained"
    pretrain_counts, cost_known = summary.get("pretrain"), True
    for name, entry in (inits or {}).items():
        if entry.get("path") == model["init"]:
            init_name, pretrain_counts = name, pretrain_counts or entry.get("pretrain")
            cost_known = pretrain_counts is not None
    return ArmResult(
        name=run_dir.name,
        init="scratch" if init_name == "scratch" else "pretrained",
        norm=model["norm"],
        schedule=solver["schedule"],
        multiplier=float(solver["schedule"][:-1]),
        train_subset=data.get("train_subset"),
        seed=int(config.get("seed", 0)),
        total_iterations=int(schedule.get("total_iterations", 0)),
        train_images=int(summary.get("train_images", 0)),
        evaluations=[(r["iteration"], r["eval"]) for r in records if "eval" in r],
        losses=[(r["iteration"], r["total_loss"]) for r in records if "total_loss" in r],
        final=summary.get("final"),
        counts=summary.get("counts", {}),
        pretrain_counts=pretrain_counts,
        run_dir=run_dir,
        val_annotations=val if val.is_absolute() else Path(data["root"]) / val,
        val_images=val_images if val_images.is_absolute() else Path(data["root"]) / val_images,
        warmup_iters=int(schedule.get("warmup_iters", solver.get("warmup_iters", 0))),
        steps=tuple(int(s) for s in schedule.get("steps", ())),
        seconds_per_iteration=step_seconds[len(step_seconds) // 2] if step_seconds else math.nan,
        init_source=str(model["init"]),
        init_name=init_name,
        pretrain_cost_known=cost_known,
        final_on_more_images=bool(config.get("eval", {}).get("final_all_images") and config["eval"].get("max_images")),
    )


@dataclass
class PretrainResult:
    """One pre-training run of a study: how far it got and how well its backbone classifies (NaN: unfinished)."""

    name: str
    iterations: int
    images: int
    top1: float
    top5: float


def read_pretraining(study_dir: Path) -> list[PretrainResult]:
    """The study's pre-training runs (STUDY_DIR/pretrain/*), finished or not; empty when it has none.

    The report shows them because a weak pre-training explains a "does not hold" as much as the data does.
    """
    results = []
    for run in sorted(p.parent for p in Path(study_dir).glob(f"pretrain/*/{rundir.CONFIG}")):
        steps = [r for r in rundir.read_metrics(run) if "images_seen" in r]
        last = steps[-1] if steps else {"iteration": 0, "images_seen": 0}
        summary = rundir.read_summary(run, "pretrain") or {}
        accuracy = (summary.get("final") or {}).get("classification", {})
        results.append(
            PretrainResult(
                name=run.name,
                iterations=int(summary.get("iteration", last["iteration"])),
                images=int(summary.get("counts", {}).get("images", last["images_seen"])),
                top1=float(accuracy.get("top1", math.nan)),
                top5=float(accuracy.get("top5", math.nan)),
            )
        )
    return results


def read_study(study_dir: Path) -> list[ArmResult]:
    arms_dir = Path(study_dir) / "arms"
    inits_path = Path(study_dir) / INITS_FILE
    inits = read_json_file(inits_path, "run the study again to rewrite it") if inits_path.is_file() else {}
    arms = [read_arm(path, inits) for path in sorted(arms_dir.iterdir())] if arms_dir.is_dir() else []
    return [arm for arm in arms if arm is not None]


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return mean(values), stdev(values) if len(values) > 1 else 0.0


def group_key(arm: ArmResult) -> tuple[str, str, float, int | None]:
    """Arms equal but for the seed."""
    return arm.init_name or arm.init, arm.norm, arm.multiplier, arm.train_subset


def grouped(arms: list[ArmResult]) -> dict[tuple[str, str, float, int | None], list[ArmResult]]:
    groups: dict[tuple[str, str, float, int | None], list[ArmResult]] = {}
    for arm in arms:
        groups.setdefault(group_key(arm), []).append(arm)
    return groups


def full_data_subset(arms: list[ArmResult]) -> int | None:
    """The 'full data' subset value of the arms (`spec.full_training_set`): None when some arm trains on everything,
    else the largest subset."""
    return full_training_set(list({arm.train_subset for arm in arms}) or [None])
