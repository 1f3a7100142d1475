"""Whether an init has converged on a study's data: the gain of its longest schedule over a clearly shorter one
(with its interval) is below a tolerance. Also the selections of finished arms the verdicts compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scratchdet.study.intervals import Evidence
from scratchdet.study.results import ArmResult

CONVERGENCE_TOLERANCE = 1.0  # box AP: converged when the longest schedule gains less than this over a shorter one
CONVERGENCE_RATIO = 1.5  # convergence compares schedules at least this far apart (the paper doubles: 3x to 6x)


def arm_group(arms: list[ArmResult], init: str, norm: str, multiplier: float, subset: int | None) -> list[ArmResult]:
    """The finished arms of one configuration (one per seed)."""
    return [
        a
        for a in arms
        if (a.init, a.norm, a.multiplier, a.train_subset) == (init, norm, multiplier, subset) and a.finished
    ]


def finished_schedules(arms: list[ArmResult], init: str, norm: str, subset: int | None) -> list[float]:
    return sorted(
        {a.multiplier for a in arms if (a.init, a.norm, a.train_subset) == (init, norm, subset) and a.finished}
    )


def paired_norms(arms: list[ArmResult], subset: int | None) -> list[str]:
    """Norms with a finished scratch and a finished pre-trained arm on `subset`."""
    return [
        n
        for n in sorted({a.norm for a in arms})
        if finished_schedules(arms, "scratch", n, subset) and finished_schedules(arms, "pretrained", n, subset)
    ]


def difference(name_a: str, name_b: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda v: v[name_a] - v[name_b]


def mean_box_ap(evidence: Evidence, group: list[ArmResult]) -> float:
    return float(np.mean([evidence.value(a, "bbox", "AP") for a in group]))


def best_schedule(evidence: Evidence, arms: list[ArmResult], init: str, norm: str, subset: int | None) -> float:
    """The schedule with the highest mean final box AP (the paper compares each init at its own best)."""
    return max(
        finished_schedules(arms, init, norm, subset),
        key=lambda m: mean_box_ap(evidence, arm_group(arms, init, norm, m, subset)),
    )


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown time"
    minutes = seconds / 60
    return f"about {minutes:.0f} min" if minutes < 120 else f"about {minutes / 60:.1f} h"


@dataclass(frozen=True)
class Convergence:
    converged: bool
    text: str
    next_step: str = ""


def schedule_text(multiplier: float) -> str:
    """A schedule as the report writes it: 1x, 0.5x, 12x; a cost-matched arm's 5.120833 as 5.12x."""
    return f"{multiplier:.3g}x"


def reference_schedule(schedules: list[float]) -> float | None:
    """What the longest schedule is compared with to call a curve flat: the longest one at least CONVERGENCE_RATIO
    times shorter, or None. A schedule close to the longest (1.3x beside 1x, a cost-matched 5.12x beside 6x) would
    call a still-rising curve flat: both end where the learning rate is low, and little separates them."""
    longest = schedules[-1]
    shorter = [m for m in schedules if m * CONVERGENCE_RATIO <= longest + 1e-9]
    return shorter[-1] if shorter else None


def convergence(evidence: Evidence, arms: list[ArmResult], init: str, norm: str, subset: int | None) -> Convergence:
    """Whether a longer schedule no longer pays: the gain of the longest schedule over the one it is compared with
    (`_reference_schedule`; box AP, with its interval) is below CONVERGENCE_TOLERANCE as a whole."""
    schedules = finished_schedules(arms, init, norm, subset)
    longest = schedules[-1]
    group = arm_group(arms, init, norm, longest, subset)
    iterations = 2 * max(a.total_iterations for a in group)
    speeds = [a.seconds_per_iteration for a in group if not math.isnan(a.seconds_per_iteration)]
    seconds = iterations * float(np.median(speeds)) if speeds else math.nan
    longer = (
        f"add a {schedule_text(2 * longest)} schedule ({iterations:,} iterations, {_duration(seconds)} per seed "
        f"at the measured speed)"
    )
    shorter = reference_schedule(schedules)
    if shorter is None:
        return Convergence(
            False,
            f"{init}: no schedule at most 1/{CONVERGENCE_RATIO:g} of {schedule_text(longest)} to compare it with "
            "(convergence not measurable)",
            f"add a {schedule_text(longest / 2)} schedule (it forks from the {schedule_text(longest)} arm), or "
            + longer,
        )
    gain = evidence.estimate(
        difference("long", "short"),
        {
            "long": (group, "bbox", "AP", None),
            "short": (arm_group(arms, init, norm, shorter, subset), "bbox", "AP", None),
        },
    )
    text = f"{init}: {schedule_text(longest)} gains {gain.text()} box AP over {schedule_text(shorter)}"
    if not gain.known:
        return Convergence(False, text + " (convergence unknown)", longer)
    if gain.below(CONVERGENCE_TOLERANCE):
        return Convergence(True, text + " (converged)")
    if gain.above(CONVERGENCE_TOLERANCE):
        return Convergence(False, text + " (still improving)", longer)
    if gain.value < CONVERGENCE_TOLERANCE:  # flat, probably: the interval, not the schedule, is short
        return Convergence(
            False,
            text + " (convergence within noise)",
            f"narrow the interval rather than train longer: more seeds (now {gain.seeds}) or validation images "
            f"(now {gain.images})",
        )
    return Convergence(False, text + " (convergence within noise)", longer)
