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

import hashlib
import math
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO

from scratchdet.engine.rundir import evaluation_file
from scratchdet.evaluation.bootstrap import accumulate, match_detections, resample_weights
from scratchdet.evaluation.coco import read_evaluation
from scratchdet.study.results import ArmResult

RESAMPLES = 500
BOOTSTRAP_SEED = 0  # the report is reproducible: the same resamples every time
Z_975 = 1.959964
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


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


@dataclass(frozen=True)
class Resampled:
    """One saved evaluation's metrics over the bootstrap resamples of its images."""

    image_ids: tuple[int, ...]
    values: dict[str, np.ndarray]  # metric (AP, AP50, AP75) -> (resamples,)


# (validation annotations, saved evaluation, task, resamples used, resamples drawn, seed): what one resampling needs.
ResampleJob = tuple[Path, Path, str, int, int, int]
_WORKER_GROUND_TRUTH: dict[Path, COCO] = {}


def resample_evaluation(job: ResampleJob) -> Resampled:
    """Match a saved evaluation once and re-accumulate its AP, AP50 and AP75 over the first `used` of `drawn`
    seeded resamples (a module function: worker processes run it)."""
    annotations, path, task, used, drawn, seed = job
    if annotations not in _WORKER_GROUND_TRUTH:
        _WORKER_GROUND_TRUTH[annotations] = COCO(str(annotations), print_function=lambda *a, **k: None)
    image_ids, detections = read_evaluation(path)
    table = match_detections(_WORKER_GROUND_TRUTH[annotations], detections, image_ids, task)
    weights = resample_weights(len(table.image_ids), drawn, seed)[:used]
    values = {metric: np.nan_to_num(v, nan=0.0) for metric, v in accumulate(table, weights).items()}
    return Resampled(tuple(table.image_ids), values)


class Evidence:
    """A study's arms, their logged metrics, and the bootstrap of their saved evaluations (loaded lazily, cached;
    `prefetch` computes many at once on every core)."""

    def __init__(self, arms: list[ArmResult], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> None:
        self.arms = arms
        self.resamples = resamples
        self.seed = seed
        self._located: dict[tuple[str, int], tuple[Path, Path, str] | None] = {}
        # Keyed by content: a forked arm's copies of its parent's evaluations are resampled once.
        self._resampled: dict[tuple[str, str, int], Resampled] = {}
        self.image_counts: set[int] = set()  # sizes of the validation sets resampled
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

    def samples(
        self, arm: ArmResult, task: str, metric: str, iteration: int | None, resamples: int | None = None
    ) -> np.ndarray | None:
        """(resamples,) bootstrap values of the metric; None when the evaluation was not saved or not readable.
        `resamples` below the Evidence's own count takes the first of the same seeded draws (a band on a curve
        needs fewer than an interval)."""
        resampled = self._get(arm, task, iteration, resamples)
        return None if resampled is None else resampled.values[metric]

    def prefetch(self, requests: list[tuple[ArmResult, str, int | None, int | None]], workers: int) -> None:
        """Compute the resamplings of (arm, task, iteration, resamples) requests on `workers` processes."""
        jobs = {}
        for arm, task, iteration, resamples in requests:
            key, job = self._job(arm, task, iteration, resamples)
            if key is not None and key not in self._resampled:
                jobs[key] = job
        if workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                results = list(pool.map(resample_evaluation, jobs.values()))
        else:
            results = [resample_evaluation(job) for job in jobs.values()]
        for key, result in zip(jobs, results, strict=True):
            self._resampled[key] = result
            self.image_counts.add(len(result.image_ids))

    def _get(self, arm: ArmResult, task: str, iteration: int | None, resamples: int | None) -> Resampled | None:
        key, job = self._job(arm, task, iteration, resamples)
        if key is None:
            return None
        if key not in self._resampled:
            self._resampled[key] = resample_evaluation(job)
            self.image_counts.add(len(self._resampled[key].image_ids))
        return self._resampled[key]

    def _job(
        self, arm: ArmResult, task: str, iteration: int | None, resamples: int | None
    ) -> tuple[tuple[str, str, int] | None, ResampleJob]:
        at = arm.total_iterations if iteration is None else iteration
        used = min(resamples or self.resamples, self.resamples)
        located = self._locate(arm, at)
        if located is None:
            return None, (Path(), Path(), task, 0, 0, 0)
        annotations, path, digest = located
        return (digest, task, used), (annotations, path, task, used, self.resamples, self.seed)

    def _locate(self, arm: ArmResult, iteration: int) -> tuple[Path, Path, str] | None:
        """(annotations, saved evaluation, digest of its content), or None (with a note) when either is missing."""
        key = (arm.name, iteration)
        if key not in self._located:
            path = evaluation_file(arm.run_dir, iteration) if arm.run_dir else None
            located = None
            if path is None or not path.is_file():
                self.notes.add("some evaluations were not saved (RUN_DIR/evaluations): their intervals are unknown")
            elif arm.val_annotations is None or not Path(arm.val_annotations).is_file():
                self.notes.add(f"validation annotations {arm.val_annotations} not found: intervals unknown")
            else:
                digest = hashlib.sha1(path.read_bytes()).hexdigest() + str(arm.val_annotations)
                located = (Path(arm.val_annotations), path, digest)
            self._located[key] = located
        return self._located[key]

    # --------------------------------------------------------------------------------------- estimates

    def estimate(self, statistic: Statistic, inputs: Inputs) -> Estimate:
        """`statistic` of the inputs' seed means, with its 95% interval (see the module docstring)."""
        seeds = _common_seeds(inputs)
        if not seeds:
            return Estimate(math.nan, math.nan, math.nan, 0, 0, "no seed common to every arm compared")
        per_seed = {
            name: np.array([self.value(_of_seed(arms, s), task, metric, it) for s in seeds])
            for name, (arms, task, metric, it) in inputs.items()
        }
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
        resampled = self._get(arm, task, iteration, None)
        return resampled.image_ids if resampled else ()


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
