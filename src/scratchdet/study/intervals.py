"""The noise of a study's numbers: intervals over seeds and validation images, convergence, cost matching.

A statistic of a comparison (a difference of AP, a log ratio) is computed for each seed s on the one validation
set: T_s. Its model (derived in docs/statistics.md) is T_s = mu + a_s + b + c_s, with a seed effect a_s (variance
sa2), an effect b of which images the validation set holds (sb2) and a seed x image interaction c_s (sc2). The
estimate is the mean over n seeds, whose variance is (sa2 + sc2)/n + sb2. Two observed spreads estimate its parts:

* the spread of T_s over seeds (on the fixed set b is constant): S2 estimates sa2 + sc2, so S2/n is the seed part,
  with n - 1 degrees of freedom;
* the paired bootstrap over the validation images (the same resamples for every arm and seed, from each
  evaluation's saved detections, `evaluation/bootstrap.py`): the covariance of two seeds' replicates estimates sb2
  alone (c_s and c_t are independent), the variance within one seed sb2 + sc2.

Adding the bootstrap variance of the seed mean to S2/n, as this module once did, counts sc2/n twice. The interval
is value +- sqrt((t * seed SE)^2 + (z * image SE)^2), t Student's quantile with n - 1 degrees of freedom and z the
normal one: each part's own interval, added in quadrature. A Welch-Satterthwaite t on the summed variance (fractional
degrees of freedom) covers only 88-91% at two seeds when the seeds' spread dominates, since one degree of freedom
makes its estimate of that spread often tiny; the quadrature form never covers less than 95% in the simulations of
docs/statistics.md (at most 98.9% at two seeds, 97.3% at five). One seed gives no S2: its interval is the
bootstrap's alone, holds no training noise, and `Estimate.training_noise` says so (a verdict does not decide on
it). Missing saved evaluations leave the interval unknown, never zero. AP of an evaluation without detections is 0.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO

from scratchdet.engine import rundir
from scratchdet.engine.rundir import evaluation_file
from scratchdet.evaluation.bootstrap import accumulate, match_detections, resample_weights
from scratchdet.evaluation.coco import read_evaluation
from scratchdet.study.results import ArmResult

RESAMPLES = 500
BOOTSTRAP_SEED = 0  # the report is reproducible: the same resamples every time
LEVEL = 0.95
Z_975 = 1.959964


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def t_tail(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with `df` (any positive real) degrees of freedom."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2))
    return _incomplete_beta(df / (df + t * t), df / 2, 0.5)


@functools.lru_cache(maxsize=4096)
def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom (any positive real; inf: the
    normal's)."""
    low, high = 0.0, 1.0
    while t_tail(high, df) > 1 - level:
        high *= 2
    for _ in range(200):  # bisection: the tail falls monotonically in t
        middle = (low + high) / 2
        low, high = (middle, high) if t_tail(middle, df) > 1 - level else (low, middle)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def seed_and_image_variance(each: np.ndarray, replicates: np.ndarray) -> tuple[float, float]:
    """(seed part, image part) of the variance of the seed mean, from each seed's statistic `each` (n,) and its
    bootstrap replicates (n, resamples) over the validation images, the same resamples for every seed (module
    docstring). One seed: no seed part, and the image part is its bootstrap's whole variance."""
    seeds = len(each)
    if seeds == 1:
        return 0.0, float(np.var(replicates[0], ddof=1))
    covariance = np.cov(replicates)
    shared = (covariance.sum() - np.trace(covariance)) / (seeds * (seeds - 1))  # mean covariance between seeds
    return float(np.var(each, ddof=1)) / seeds, max(0.0, float(shared))  # an estimate of sb2 below 0 is 0


@dataclass(frozen=True)
class Estimate:
    """A number with the standard errors of its two parts of noise; the interval is NaN when its noise is unknown
    (`note` says why). `means` holds each input's mean over the seeds used; `images` the validation images."""

    value: float
    seed_se: float  # the seeds' spread: sqrt(S2 / n), n - 1 degrees of freedom (0 with one seed)
    image_se: float  # the validation set's: sqrt(sb2), or one seed's whole bootstrap
    seeds: int
    images: int
    note: str = ""
    means: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def unknown(cls, value: float, seeds: int, images: int, note: str, means: Mapping[str, float]) -> Estimate:
        return cls(value, math.nan, math.nan, seeds, images, note, means)

    @property
    def known(self) -> bool:
        return math.isfinite(self.seed_se) and math.isfinite(self.image_se) and math.isfinite(self.value)

    @property
    def training_noise(self) -> bool:
        """Whether the interval holds the spread between seeds (two or more): one seed's holds images alone."""
        return self.seeds >= 2

    def bounds(self, level: float = LEVEL) -> tuple[float, float]:
        if not self.known:
            return math.nan, math.nan
        seed_half = t_quantile(self.seeds - 1, level) * self.seed_se if self.seeds > 1 else 0.0
        half = math.hypot(seed_half, t_quantile(math.inf, level) * self.image_se)
        return self.value - half, self.value + half

    @property
    def low(self) -> float:
        return self.bounds()[0]

    @property
    def high(self) -> float:
        return self.bounds()[1]

    def above(self, threshold: float, level: float = LEVEL) -> bool:
        """The whole interval lies above `threshold`."""
        return self.known and self.bounds(level)[0] > threshold

    def below(self, threshold: float, level: float = LEVEL) -> bool:
        return self.known and self.bounds(level)[1] < threshold

    def text(self, unit: str = "") -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:+.1f}{unit}{self._interval_text(self.low, self.high, '.1f', '')}"

    def _interval_text(self, low: float, high: float, spec: str, unit: str) -> str:
        if not self.known:
            return f" (interval unknown: {self.note})" if self.note else " (interval unknown)"
        return f" [{low:+{spec}}{unit}, {high:+{spec}}{unit}]"

    def percent_text(self) -> str:
        """A log ratio written as a relative change in percent, its interval transformed likewise (so skewed)."""
        if not math.isfinite(self.value):
            return "n/a"
        change = lambda x: 100 * math.expm1(x)  # noqa: E731
        return f"{change(self.value):+.0f}%{self._interval_text(change(self.low), change(self.high), '.0f', '%')}"


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
ResampleTask = tuple[Path, Path, str, int, int, int]
_WORKER_GROUND_TRUTH: dict[Path, COCO] = {}


def resample_evaluation(job: ResampleTask) -> Resampled:
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


def _validation_changed(run_dir: Path, annotations: Path) -> bool:
    """Whether the run was evaluated on other validation annotations than `annotations` holds now (its saved
    detections would be matched against ground truth they were not scored on)."""
    now = {"validation annotations": {"path": str(annotations), "sha1": rundir.file_digest(annotations)}}
    return bool(rundir.data_changes(run_dir, now))


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
        self.used_images: set[int] = set()  # sizes of the validation sets the estimates so far rested on
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

    def _get(self, arm: ArmResult, task: str, iteration: int | None, resamples: int | None) -> Resampled | None:
        key, job = self._job(arm, task, iteration, resamples)
        if key is None:
            return None
        if key not in self._resampled:
            self._resampled[key] = resample_evaluation(job)
        return self._resampled[key]

    def _job(
        self, arm: ArmResult, task: str, iteration: int | None, resamples: int | None
    ) -> tuple[tuple[str, str, int] | None, ResampleTask]:
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
            elif arm.run_dir is not None and _validation_changed(arm.run_dir, Path(arm.val_annotations)):
                self.notes.add(
                    f"validation annotations {arm.val_annotations} changed since some arms were evaluated: their "
                    "intervals are unknown"
                )
            else:
                digest = hashlib.sha1(path.read_bytes()).hexdigest() + str(arm.val_annotations)
                located = (Path(arm.val_annotations), path, digest)
            self._located[key] = located
        return self._located[key]

    # --------------------------------------------------------------------------------------- estimates

    def estimate(self, statistic: Statistic, inputs: Inputs) -> Estimate:
        """`statistic` of the inputs' seed means, with its standard error (see the module docstring)."""
        seeds = _common_seeds(inputs)
        if not seeds:
            return Estimate.unknown(math.nan, 0, 0, "no seed common to every arm compared", {})
        per_seed = {
            name: np.array([self.value(_of_seed(arms, s), task, metric, it) for s in seeds])
            for name, (arms, task, metric, it) in inputs.items()
        }
        replicates, images = self._bootstrap(inputs, seeds)
        self.used_images.add(images)
        return estimate_from(statistic, per_seed, replicates, images)

    def _bootstrap(self, inputs: Inputs, seeds: list[int]) -> tuple[dict[str, np.ndarray] | None, int]:
        """({input: (seeds, resamples) bootstrap values}, validation images), or None where an evaluation was not
        saved or the arms compared were evaluated on different images."""
        replicates = {}
        image_sets = set()
        for name, (arms, task, metric, iteration) in inputs.items():
            samples = [self.samples(_of_seed(arms, s), task, metric, iteration) for s in seeds]
            image_sets |= {self._image_set(_of_seed(arms, s), task, iteration) for s in seeds}
            if any(s is None for s in samples):
                return None, 0
            if len(image_sets) > 1:
                self.notes.add("arms compared were evaluated on different images: their intervals are unknown")
                return None, 0
            replicates[name] = np.stack(samples)  # type: ignore[arg-type]
        return replicates, len(image_sets.pop()) if image_sets else 0

    def _image_set(self, arm: ArmResult, task: str, iteration: int | None) -> tuple[int, ...]:
        resampled = self._get(arm, task, iteration, None)
        return resampled.image_ids if resampled else ()


def estimate_from(
    statistic: Statistic,
    per_seed: dict[str, np.ndarray],
    replicates: dict[str, np.ndarray] | None,
    images: int,
) -> Estimate:
    """`statistic` of the seed means of `per_seed` ({input: (seeds,)}), its standard error from the seeds' spread and
    the bootstrap `replicates` ({input: (seeds, resamples)}, None when not saved) as the model says."""
    seeds = len(next(iter(per_seed.values())))
    means = {name: float(v.mean()) for name, v in per_seed.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(statistic({name: np.array([m]) for name, m in means.items()})[0])
        each = statistic(per_seed)
        each_replicates = statistic(replicates) if replicates is not None else None
    if each_replicates is None or not math.isfinite(value):
        return Estimate.unknown(value, seeds, images, "saved evaluations missing", means)
    if not (np.isfinite(each).all() and np.isfinite(each_replicates).all()):
        note = "infinite or undefined in some resamples (an AP of 0 under a ratio)"
        return Estimate.unknown(value, seeds, images, note, means)
    seed_part, image_part = seed_and_image_variance(each, each_replicates)
    return Estimate(value, math.sqrt(seed_part), math.sqrt(image_part), seeds, images, "", means)


def _common_seeds(inputs: Inputs) -> list[int]:
    """Seeds with an arm in every input (finished, where the input is a final evaluation)."""
    per_input = [
        {a.seed for a in arms if a.finished or iteration is not None} for arms, _, _, iteration in inputs.values()
    ]
    return sorted(set.intersection(*per_input)) if per_input else []


def _of_seed(arms: list[ArmResult], seed: int) -> ArmResult:
    return next(a for a in arms if a.seed == seed)
