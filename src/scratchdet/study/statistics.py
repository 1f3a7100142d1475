"""The noise of a study's numbers: intervals over seeds and validation images, convergence, cost matching.

Two sources of noise, independent of each other, are added:

* **training** (seeds): a statistic computed for each seed (arms of the same seed share data order and sampling,
  so they are paired by seed) has standard error sd / sqrt(n) with n - 1 degrees of freedom;
* **validation set** (images): the statistic recomputed on bootstrap resamples of the validation images (the same
  resamples for every arm: paired), from each evaluation's saved detections (`RUN_DIR/evaluations`), re-matched
  once and re-accumulated per resample (`evaluation/bootstrap.py`). Its standard error is the resamples' std.

The interval is value ± q · sqrt(se_seeds² + se_images²), q the two-sided 95% quantile of Student's t with
Welch–Satterthwaite degrees of freedom (the bootstrap term counting as infinitely many), so with one seed it is
the normal quantile 1.96 and with few seeds it widens. Missing saved evaluations leave the interval unknown,
never zero. AP of an evaluation without detections is 0, not NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO

from scratchdet.engine.hooks import evaluation_file
from scratchdet.evaluation.bootstrap import MatchTable, accumulate, match_detections, resample_weights
from scratchdet.evaluation.coco import read_evaluation
from scratchdet.study.results import ArmResult

RESAMPLES = 500
BOOTSTRAP_SEED = 0  # the report is reproducible: the same resamples every time
Z_975 = 1.959964
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: float) -> float:
    """Two-sided 95% quantile of Student's t with `df` degrees of freedom (rounded down: conservative)."""
    if math.isinf(df):
        return Z_975
    whole = max(1, int(df))
    if whole <= len(T_975):
        return T_975[whole - 1]
    return Z_975 + (Z_975**3 + Z_975) / (4 * whole)  # Cornish-Fisher: within 0.001 above 30


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval; `low`/`high` are NaN when its noise is unknown (`note` says why)."""

    value: float
    low: float
    high: float
    seeds: int
    images: int
    note: str = ""

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def above(self, threshold: float) -> bool:
        """The whole interval lies above `threshold`."""
        return self.known and self.low > threshold

    def below(self, threshold: float) -> bool:
        return self.known and self.high < threshold

    def text(self, unit: str = "") -> str:
        if math.isnan(self.value):
            return "n/a"
        interval = f" [{self.low:+.1f}, {self.high:+.1f}]" if self.known else " (interval unknown)"
        return f"{self.value:+.1f}{unit}{interval}"


# A quantity to estimate, for each input name: (arms of one configuration, one per seed; task; metric; iteration or
# None for the final evaluation).
Inputs = Mapping[str, tuple[list[ArmResult], str, str, int | None]]
Statistic = Callable[[dict[str, np.ndarray]], np.ndarray]


class Evidence:
    """A study's arms, their logged metrics, and the bootstrap of their saved evaluations (loaded lazily, cached)."""

    def __init__(self, arms: list[ArmResult], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> None:
        self.arms = arms
        self.resamples = resamples
        self.seed = seed
        self._ground_truth: dict[Path, COCO | None] = {}
        self._samples: dict[tuple[str, str, str, int], np.ndarray | None] = {}
        self._tables: dict[tuple[str, str, int], MatchTable | None] = {}
        self.image_counts: set[int] = set()  # sizes of the validation sets resampled
        self._weights: dict[tuple[int, ...], np.ndarray] = {}
        self.notes: set[str] = set()

    # ------------------------------------------------------------------------------------------ values

    @staticmethod
    def value(arm: ArmResult, task: str, metric: str, iteration: int | None = None) -> float:
        """The logged metric (final or at `iteration`); an evaluation without detections counts as 0."""
        if iteration is None:
            value = arm.metric(task, metric)
            finished = arm.finished
        else:
            value = dict(arm.curve(task, metric)).get(iteration, math.nan)
            finished = iteration in dict(arm.curve(task, metric))
        return 0.0 if finished and math.isnan(value) else value

    def samples(self, arm: ArmResult, task: str, metric: str, iteration: int | None) -> np.ndarray | None:
        """(resamples,) bootstrap values of the metric; None when the evaluation was not saved or not readable."""
        at = arm.total_iterations if iteration is None else iteration
        key = (arm.name, task, metric, at)
        if key not in self._samples:
            table = self._table(arm, task, at)
            if table is None:
                self._samples[key] = None
            else:
                values = accumulate(table, self._weights_for(table))[metric]
                self._samples[key] = np.nan_to_num(values, nan=0.0)
        return self._samples[key]

    def _table(self, arm: ArmResult, task: str, iteration: int) -> MatchTable | None:
        key = (arm.name, task, iteration)
        if key in self._tables:
            return self._tables[key]
        table = None
        path = evaluation_file(arm.run_dir, iteration) if arm.run_dir else None
        ground_truth = self._annotations(arm.val_annotations) if arm.val_annotations else None
        if path is None or not path.is_file():
            self.notes.add("some evaluations were not saved (RUN_DIR/evaluations): their intervals are unknown")
        elif ground_truth is None:
            self.notes.add(f"validation annotations {arm.val_annotations} not found: intervals unknown")
        else:
            image_ids, detections = read_evaluation(path)
            table = match_detections(ground_truth, detections, image_ids, task)
            self.image_counts.add(len(table.image_ids))
        self._tables[key] = table
        return table

    def _annotations(self, path: Path) -> COCO | None:
        if path not in self._ground_truth:
            self._ground_truth[path] = COCO(str(path), print_function=lambda *a, **k: None) if path.is_file() else None
        return self._ground_truth[path]

    def _weights_for(self, table: MatchTable) -> np.ndarray:
        """The resamples of this evaluation's image set: the same for every arm evaluated on it (paired)."""
        key = tuple(table.image_ids)
        if key not in self._weights:
            self._weights[key] = resample_weights(len(key), self.resamples, self.seed)
        return self._weights[key]

    # --------------------------------------------------------------------------------------- estimates

    def estimate(self, statistic: Statistic, inputs: Inputs) -> Estimate:
        """`statistic` of the inputs' seed means, with its 95% interval (see the module docstring)."""
        seeds = _common_seeds(inputs)
        if not seeds:
            return Estimate(math.nan, math.nan, math.nan, 0, 0, "no seed common to every arm compared")
        per_seed = {name: np.array([self.value(_of_seed(arms, s), task, metric, it) for s in seeds])
                    for name, (arms, task, metric, it) in inputs.items()}  # fmt: skip
        value = float(statistic({name: np.array([v.mean()]) for name, v in per_seed.items()})[0])
        variance, denominator = 0.0, 0.0
        if len(seeds) > 1:
            each = statistic(per_seed)
            seed_variance = float(np.var(each, ddof=1)) / len(seeds)
            variance += seed_variance
            denominator += seed_variance**2 / (len(seeds) - 1)
        boot = self._bootstrap(statistic, inputs, seeds)
        images = max(self.image_counts, default=0)
        if boot is None or math.isnan(value):
            return Estimate(value, math.nan, math.nan, len(seeds), images, "saved evaluations missing")
        with np.errstate(invalid="ignore"):
            variance += float(np.nanvar(boot, ddof=1)) if np.isfinite(boot).sum() > 1 else math.nan
        df = variance**2 / denominator if denominator > 0 else math.inf
        half = t_quantile(df) * math.sqrt(variance)
        return Estimate(value, value - half, value + half, len(seeds), images)

    def _bootstrap(self, statistic: Statistic, inputs: Inputs, seeds: list[int]) -> np.ndarray | None:
        means = {}
        image_sets = set()
        for name, (arms, task, metric, iteration) in inputs.items():
            samples = [self.samples(_of_seed(arms, s), task, metric, iteration) for s in seeds]
            if any(s is None for s in samples):
                return None
            image_sets |= {self._image_set(_of_seed(arms, s), task, iteration) for s in seeds}
            if len(image_sets) > 1:
                self.notes.add("arms compared were evaluated on different images: their intervals are unknown")
                return None
            means[name] = np.mean(np.stack(samples), axis=0)  # type: ignore[arg-type]
        return statistic(means)

    def _image_set(self, arm: ArmResult, task: str, iteration: int | None) -> tuple[int, ...]:
        table = self._tables.get((arm.name, task, arm.total_iterations if iteration is None else iteration))
        return tuple(table.image_ids) if table else ()


def _common_seeds(inputs: Inputs) -> list[int]:
    """Seeds with an arm in every input (finished, where the input is a final evaluation)."""
    per_input = [
        {a.seed for a in arms if a.finished or iteration is not None} for arms, _, _, iteration in inputs.values()
    ]
    return sorted(set.intersection(*per_input)) if per_input else []


def _of_seed(arms: list[ArmResult], seed: int) -> ArmResult:
    return next(a for a in arms if a.seed == seed)


# ----------------------------------------------------------------------------------------------- cost


def matched_iterations(pretrain_pixels: float, finetune_iterations: int, pixels_per_iteration: float) -> int:
    """Iterations a from-scratch arm needs to see as many pixels as pre-training plus `finetune_iterations` of
    fine-tuning (both detection arms see the same pixels per iteration): rounded up, so it never sees fewer."""
    return math.ceil(finetune_iterations + pretrain_pixels / pixels_per_iteration - 1e-9)
