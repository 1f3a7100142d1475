"""The 95% intervals cover the truth 95% of the time: simulated from the variance model of `intervals.py` with a
known truth and run through the report's own code (`tools/interval_coverage.py`, which prints the whole table).

4,000 replications a case: a coverage of 95% is counted within +-0.7 points (one standard error 0.34), so the band
[93%, 97%] fails a method that is off by 2 points or more. That band holds where the bootstrap is the whole noise
(one seed without a seed effect). With seeds, the interval adds each part's own interval in quadrature, which is
conservative where both parts matter (docs/statistics.md: no form tried reaches 95% at every ratio with the one
degree of freedom of two seeds without under-covering somewhere): the band is [93%, 98%] at five seeds and [93%,
99%] at two. Never below 93%: a verdict's claim must not be wrong more often than it says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import interval_coverage as simulation

REPLICATIONS = 4000


def _band(seeds: int) -> tuple[float, float]:
    return {1: (0.93, 0.97), 2: (0.93, 0.99)}.get(seeds, (0.93, 0.98))


@pytest.mark.parametrize("case", [c for c in simulation.DIFFERENCE_CASES if c[0] > 1 or c[1] == 0])
def test_the_interval_of_a_difference_covers_95_percent(case: tuple[int, float, float, float]) -> None:
    (coverage,) = simulation.difference_coverage(case, REPLICATIONS, [simulation.report_bounds])
    low, high = _band(case[0])
    assert low <= coverage <= high, coverage


@pytest.mark.parametrize("case", simulation.RATIO_CASES)
def test_the_interval_of_a_relative_gain_covers_95_percent(case: tuple[int, float, float, float]) -> None:
    """Finding 4's relative gains, judged on log(pre-trained / scratch)."""
    (coverage,) = simulation.ratio_coverage(case, REPLICATIONS, [simulation.report_bounds])
    low, high = _band(case[0])
    assert low <= coverage <= high, coverage


def test_one_seed_cannot_cover_a_seed_effect_it_never_saw() -> None:
    """Why one seed decides nothing (verdicts say "inconclusive: one seed"): with a seed effect of sd 0.3 and an
    image standard error of 0.15, the bootstrap-only interval covers about two times in three."""
    (coverage,) = simulation.difference_coverage((1, 0.3, 0.15, 0.0), REPLICATIONS, [simulation.report_bounds])
    assert coverage < 0.8, coverage


def test_two_seeds_under_welch_satterthwaite_cover_too_little_where_the_seeds_dominate() -> None:
    """The reason for the quadrature form: the summed variance with fractional degrees of freedom under-covers
    when the seeds' spread (one degree of freedom) dominates; the report's interval does not."""
    case = (2, 0.3, 0.15, 0.10)
    report, satterthwaite = simulation.difference_coverage(
        case, REPLICATIONS, [simulation.report_bounds, simulation.satterthwaite_bounds]
    )
    assert satterthwaite < 0.93 <= report, (satterthwaite, report)
