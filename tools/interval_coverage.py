"""How often the report's 95% intervals cover the truth, simulated from the variance model of study/intervals.py.

Each seed s scores each validation image i: x[s, i] = truth + a[s] + c[i] + e[s, i] (seed effect a, image effect c
shared by every seed, seed x image interaction e); a seed's number is the mean over the images, as an AP is a score
pooled over them. The bootstrap draws the same resamples of the images for every seed, as the report does, and the
interval comes from the report's own code (`intervals.estimate_from`). The relative gain of finding 4 is simulated
the same way for two inits (scratch 10, pre-trained 15: +50%) and judged on its log ratio.

    python tools/interval_coverage.py              # the table in docs/statistics.md (about a minute on 2 cores)
    python tools/interval_coverage.py --quick      # 1,000 replications a case

The column "Welch-Satterthwaite" is the interval this module's method replaced (t on the summed variance with
fractional degrees of freedom), computed from the same standard errors, for comparison.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np

from scratchdet.study.findings import _log_ratio
from scratchdet.study.intervals import RESAMPLES, Estimate, estimate_from, t_quantile

IMAGES = 200
BATCH = 100  # replications sharing one draw of bootstrap weights (each still a valid bootstrap of its own data)
DIFFERENCE_CASES = [  # (seeds, seed effect sd, image effect SE, seed x image SE)
    (2, 0.3, 0.15, 0.10),  # the seeds' spread dominates
    (2, 0.1, 0.30, 0.10),  # the validation set dominates
    (2, 0.2, 0.05, 0.30),  # the seed x image part dominates: counting it twice over-covers
    (5, 0.3, 0.15, 0.10),
    (5, 0.1, 0.30, 0.10),
    (5, 0.2, 0.05, 0.30),
    (1, 0.0, 0.15, 0.10),  # one seed, no seed effect: the bootstrap alone is the whole noise
    (1, 0.0, 0.05, 0.30),
    (1, 0.3, 0.15, 0.00),  # one seed and a seed effect it never saw: why one seed decides nothing
]
RATIO_CASES = [(2, 1.0, 0.6, 0.4), (2, 0.3, 1.2, 0.4), (5, 1.0, 0.6, 0.4), (5, 0.3, 1.2, 0.4), (1, 0.0, 1.0, 0.5)]

Bounds = Callable[[Estimate], tuple[float, float]]


def report_bounds(estimate: Estimate) -> tuple[float, float]:
    return estimate.bounds()


def satterthwaite_bounds(estimate: Estimate) -> tuple[float, float]:
    seed_part, variance = estimate.seed_se**2, estimate.seed_se**2 + estimate.image_se**2
    df = variance**2 * (estimate.seeds - 1) / seed_part**2 if seed_part > 0 else math.inf
    half = t_quantile(df) * math.sqrt(variance)
    return estimate.value - half, estimate.value + half


def _weights(rng: np.random.Generator) -> np.ndarray:
    """(resamples, images) bootstrap counts divided by the image count: `weights @ x` is a resample's mean."""
    draws = rng.integers(0, IMAGES, size=(RESAMPLES, IMAGES))
    counts = np.zeros((RESAMPLES, IMAGES))
    np.add.at(counts, (np.arange(RESAMPLES)[:, None], draws), 1.0)
    return counts / IMAGES


def _scores(rng: np.random.Generator, seeds: int, truth: float, seed_sd: float, image_se: float,
            cross_se: float) -> np.ndarray:  # fmt: skip
    """(BATCH, seeds, images) per-image scores whose image means have the given spreads: seed effect sd `seed_sd`,
    image effect standard error `image_se`, seed x image standard error `cross_se` (per image: se x sqrt(N))."""
    seed_effect = rng.normal(0, seed_sd, (BATCH, seeds, 1))
    image_effect = rng.normal(0, image_se * math.sqrt(IMAGES), (BATCH, 1, IMAGES))
    cross = rng.normal(0, cross_se * math.sqrt(IMAGES), (BATCH, seeds, IMAGES))
    return truth + seed_effect + image_effect + cross


def difference_coverage(case: tuple[int, float, float, float], replications: int, methods: list[Bounds],
                        seed: int = 0) -> list[float]:  # fmt: skip
    """The share of `replications` whose interval (one per method) holds the true difference, 1.0."""
    seeds, seed_sd, image_se, cross_se = case
    rng = np.random.default_rng([seed, seeds, round(seed_sd * 100), round(image_se * 100), round(cross_se * 100)])
    covered = np.zeros(len(methods))
    for _ in range(replications // BATCH):
        weights = _weights(rng)
        for x in _scores(rng, seeds, 1.0, seed_sd, image_se, cross_se):
            estimate = estimate_from(lambda v: v["d"], {"d": x.mean(axis=1)}, {"d": x @ weights.T}, IMAGES)
            covered += [low <= 1.0 <= high for low, high in (method(estimate) for method in methods)]
    return list(covered / (replications // BATCH * BATCH))


def ratio_coverage(case: tuple[int, float, float, float], replications: int, methods: list[Bounds],
                   seed: int = 0) -> list[float]:  # fmt: skip
    """The same for finding 4's log ratio of pre-trained to scratch AP-like scores (images' effect shared in part)."""
    seeds, seed_sd, image_se, cross_se = case
    rng = np.random.default_rng([seed, 1, seeds, round(seed_sd * 100), round(image_se * 100)])
    truth, statistic = math.log(15.0 / 10.0), _log_ratio("bbox", "AP50")
    names = ("scratch bbox AP50", "pretrained bbox AP50")
    covered = np.zeros(len(methods))
    for _ in range(replications // BATCH):
        weights = _weights(rng)
        shared = _scores(rng, seeds, 0.0, 0.0, image_se, 0.0)  # what makes an image hard for both inits
        scratch = shared + _scores(rng, seeds, 10.0, seed_sd, image_se / 2, cross_se)
        pre = shared + _scores(rng, seeds, 15.0, seed_sd, image_se / 2, cross_se)
        for s, p in zip(scratch, pre, strict=True):
            per_seed = {names[0]: s.mean(axis=1), names[1]: p.mean(axis=1)}
            replicates = {names[0]: s @ weights.T, names[1]: p @ weights.T}
            estimate = estimate_from(statistic, per_seed, replicates, IMAGES)
            covered += [low <= truth <= high for low, high in (method(estimate) for method in methods)]
    return list(covered / (replications // BATCH * BATCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 replications a case instead of 4,000")
    replications = 1000 if parser.parse_args().quick else 4000
    methods = [report_bounds, satterthwaite_bounds]
    print(f"{replications:,} replications a case, {IMAGES} validation images, {RESAMPLES} bootstrap resamples")
    print("| statistic | seeds | seed effect sd | image SE | seed x image SE | report | Welch-Satterthwaite |")
    print("|---|---|---|---|---|---|---|")
    for kind, cases, coverage in (("difference", DIFFERENCE_CASES, difference_coverage),
                                  ("log ratio", RATIO_CASES, ratio_coverage)):  # fmt: skip
        for case in cases:
            found = coverage(case, replications, methods)
            print(f"| {kind} | {' | '.join(f'{v:g}' for v in case)} | {found[0]:.1%} | {found[1]:.1%} |", flush=True)


if __name__ == "__main__":
    main()
