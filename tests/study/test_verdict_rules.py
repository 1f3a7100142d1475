"""The verdicts' rules at their boundaries, on exact numbers: where an interval touches a threshold, where the
signal floor and the cost tolerance lie, how parts combine, and what unfinished, subset-only and NaN inputs give."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scratchdet.study import convergence, findings, verdicts
from scratchdet.study.findings import all_verdicts
from scratchdet.study.intervals import Estimate, t_quantile
from scratchdet.study.results import ArmResult, read_study
from scratchdet.study.verdicts import Part, Status
from tests.study.test_verdicts import _pair


def _estimate(low: float, high: float, seeds: int = 2) -> Estimate:
    """An estimate whose 95% interval is [low, high], all of it the validation set's noise."""
    return Estimate((low + high) / 2, 0.0, (high - low) / 2 / t_quantile(math.inf), seeds, 100)


@pytest.mark.parametrize(
    ("low", "high", "status"),
    [
        (-0.999, 2.0, Status.HOLDS),  # wholly above -1
        (-1.000001, 2.0, Status.INCONCLUSIVE),  # reaching past the threshold is not above it
        (-3.0, -0.999999, Status.INCONCLUSIVE),
        (-3.0, -1.001, Status.FAILS),  # wholly below
        (math.nan, math.nan, Status.INCONCLUSIVE),
    ],
)
def test_an_interval_decides_only_when_wholly_on_one_side(low: float, high: float, status: str) -> None:
    judged, reason = verdicts.judge(_estimate(low, high), -verdicts.MATCH_TOLERANCE)
    assert judged == status
    if math.isnan(low):
        assert reason == "interval unknown (saved evaluations missing)"
    elif status == Status.INCONCLUSIVE:
        assert reason == "within noise"


@pytest.mark.parametrize(("low", "high"), [(-0.5, 2.0), (-3.0, -1.5)])
def test_one_seed_decides_nothing_however_narrow_its_interval(low: float, high: float) -> None:
    """One seed's interval holds the validation set's noise alone (it covers 63% with a seed effect of sd 0.3
    AP against an image SE of 0.15: tests/study/test_coverage.py), so it never says holds or does not hold."""
    assert verdicts.judge(_estimate(low, high, seeds=2), -1.0)[0] in (Status.HOLDS, Status.FAILS)
    assert verdicts.judge(_estimate(low, high, seeds=1), -1.0) == (Status.INCONCLUSIVE, verdicts.ONE_SEED)


def test_the_signal_floor_is_one_ap_on_every_arm_compared() -> None:
    assert verdicts.SIGNAL_FLOOR == 1.0
    assert verdicts.too_little_signal(0.999, 0.5)
    assert not verdicts.too_little_signal(1.0, 0.5)  # one arm at the floor is enough signal
    assert verdicts.too_little_signal(math.nan, 0.2) and not verdicts.too_little_signal(math.nan, 1.5)


def _arm(init: str, multiplier: float, pixels: int, pretrain: int | None = None) -> ArmResult:
    return ArmResult(f"{init}_{multiplier}", init, "gn", f"{multiplier}x", multiplier, None, 0, 100, 1000,
                     counts={"pixels": pixels}, pretrain_counts={"pixels": pretrain} if pretrain else None,
                     final={"bbox": {"AP": 5.0}})  # fmt: skip


@pytest.mark.parametrize(("scratch_pixels", "matched"), [(110, True), (90, True), (111, False), (89, False)])
def test_a_comparable_cost_is_within_ten_percent_of_the_pixels(scratch_pixels: int, matched: bool) -> None:
    pre = [_arm("pretrained", 1.0, 40, pretrain=60)]  # pre-training 60 + fine-tuning 40 = 100 pixels
    arms = [*pre, _arm("scratch", 1.0, 40), _arm("scratch", 2.5, scratch_pixels)]
    found = findings._cost_matched(arms, pre, "gn", None)
    assert found == (2.5 if matched else None)


@pytest.mark.parametrize(
    ("schedules", "reference"),
    [
        ([1.0, 3.0, 6.0], 3.0),
        ([1.0, 3.0, 5.120833, 6.0], 3.0),  # a cost-matched arm just below the longest is not a doubling
        ([1.0, 2.0], 1.0),
        ([2.0, 3.0], 2.0),  # 1.5 times shorter is far enough
        ([0.5, 1.0, 1.5], 1.0),
        ([1.0, 1.3], None),  # near neighbours end alike whether or not the curve is flat: not measurable
        ([5.120833, 6.0], None),
    ],
)
def test_convergence_compares_the_longest_schedule_with_one_at_least_one_and_a_half_times_shorter(
    schedules: list[float], reference: float | None
) -> None:
    assert convergence.reference_schedule(schedules) == reference


def test_schedules_are_written_with_three_significant_digits() -> None:
    assert [convergence.schedule_text(m) for m in (1.0, 0.5, 12.0, 5.120833)] == ["1x", "0.5x", "12x", "5.12x"]


def test_parts_combine_into_one_verdict() -> None:
    def combine(*statuses: Status) -> tuple[Status, str]:
        parts = [
            Part(f"n{i}", s, "why" if s in (Status.UNTESTED, Status.INCONCLUSIVE) else "", "")
            for i, s in enumerate(statuses)
        ]
        verdict = verdicts.combine(verdicts.Finding.MATCHING, parts, "rule", [], "needs arms")
        return verdict.status, verdict.reason

    assert combine(Status.HOLDS, Status.HOLDS) == (Status.HOLDS, "")
    assert combine(Status.HOLDS, Status.UNTESTED) == (
        Status.HOLDS,
        "",
    )  # an untested part does not count against the others
    assert combine(Status.FAILS, Status.FAILS) == (Status.FAILS, "")
    assert combine(Status.HOLDS, Status.FAILS) == (Status.INCONCLUSIVE, "the parts disagree")
    assert combine(Status.HOLDS, Status.INCONCLUSIVE) == (Status.INCONCLUSIVE, "the parts disagree")
    assert combine(Status.UNTESTED, Status.UNTESTED) == (Status.UNTESTED, "why")
    empty = verdicts.combine(verdicts.Finding.MATCHING, [], "rule", [], "needs arms")
    assert (empty.status, empty.reason, empty.evidence) == (Status.UNTESTED, "no such arms", "needs arms")


def test_an_unfinished_arm_is_not_judged(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8))
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6)
    for run in (tmp_path / "arms").glob("pretrained_gn_*"):
        (run / "summary.json").unlink()  # still training, every seed
    first = all_verdicts(read_study(tmp_path))[0]
    assert first.label == "not tested: no such arms"


def test_a_study_of_subsets_only_judges_its_largest_subset_as_the_full_data(tmp_path: Path) -> None:
    for subset in (500, 100):
        _pair(tmp_path, "scratch", (0.8, 0.8), subset=subset)
        _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6, subset=subset)
    found = all_verdicts(read_study(tmp_path))
    assert found[0].status == Status.HOLDS and "n500" not in found[0].evidence
    assert found[2].status == Status.HOLDS, found[2].evidence  # the reduced set: 100 images
