"""Each status of each finding, from run directories whose evaluations are real detections scored for real.

`write_scored_arm` finds a `quality` share of the ground truths (a better arm finds a superset) with boxes off by
`jitter`; the intervals come from the same bootstrap the report uses.
"""

from pathlib import Path

import numpy as np
import pytest

from scratchdet.study.results import read_study
from scratchdet.study.statistics import Evidence, matched_iterations, t_quantile
from scratchdet.study.verdicts import FAILS, HOLDS, INCONCLUSIVE, Verdict, all_verdicts
from tests.study.fixtures import write_scored_arm


def _verdicts(study: Path) -> list[Verdict]:
    return all_verdicts(read_study(study))


def _pair(study: Path, init: str, qualities: tuple[float, float], *, early: float = 0.3, jitter: float = 0.05,
          seed: int = 0, subset: int | None = None, mask_jitter: float | None = None) -> None:  # fmt: skip
    """A 1x (300 iterations) and a 2x (600) arm of `init`, ending at `qualities`; evaluations every 100."""
    name = f"{init}_gn_{{}}_{'n' + str(subset) + '_' if subset else ''}seed{seed}"
    one, two = qualities
    write_scored_arm(study, name.format("1x"), init=init, schedule="1x", seed=seed, subset=subset, jitter=jitter,
                     mask_jitter=mask_jitter, curve=[(100, early), (200, (early + one) / 2), (300, one)])  # fmt: skip
    write_scored_arm(study, name.format("2x"), init=init, schedule="2x", seed=seed, subset=subset, jitter=jitter,
                     mask_jitter=mask_jitter,
                     curve=[(100, early), (200, (early + one) / 2), (400, two - 0.02), (600, two)])  # fmt: skip


# ------------------------------------------------------------------------------------------ finding 1


def test_finding_1_holds_when_converged_and_level(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8))
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6)
    verdict = _verdicts(tmp_path)[0]
    assert verdict.status == HOLDS, verdict.evidence
    assert verdict.evidence.startswith("gn: scratch"), "one part (one norm) carries no label of its own"
    assert "difference +0.0 [+0.0, +0.0]" in verdict.evidence
    assert "scratch: 2x gains +0.0 [+0.0, +0.0] box AP over 1x (converged)" in verdict.evidence
    assert verdict.conditions == ["seeds: 1 (0)", "validation images: 120"]


def test_finding_1_does_not_hold_when_scratch_ends_clearly_behind(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.5, 0.5))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    assert _verdicts(tmp_path)[0].status == FAILS


def test_finding_1_is_inconclusive_when_scratch_is_still_improving(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.5, 0.8))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    verdict = _verdicts(tmp_path)[0]
    assert verdict.label == "inconclusive: not converged"
    assert "(still improving)" in verdict.evidence
    assert (
        "scratch: add a 4x schedule (1,200 iterations, about 10 min per seed at the measured speed)" in verdict.evidence
    )


def test_finding_1_is_inconclusive_within_noise(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.77, 0.77))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    verdict = _verdicts(tmp_path)[0]
    assert verdict.label == "inconclusive: within noise", verdict.evidence


def test_finding_1_has_too_little_signal_near_zero(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.0, 0.0), early=0.0)
    _pair(tmp_path, "pretrained", (0.005, 0.005), early=0.0)
    assert _verdicts(tmp_path)[0].label == "not tested: too little signal"


def test_finding_1_needs_both_inits(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8))
    assert _verdicts(tmp_path)[0].label == "not tested: no such arms"


def test_norms_that_disagree_make_the_finding_inconclusive(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    for init, quality in (("scratch", 0.4), ("pretrained", 0.8)):
        for schedule, iterations in (("1x", 300), ("2x", 600)):
            write_scored_arm(tmp_path, f"{init}_bn_{schedule}_seed0", init=init, schedule=schedule, norm="bn",
                             curve=[(100, 0.3), (iterations, quality)])  # fmt: skip
    verdict = _verdicts(tmp_path)[0]
    assert verdict.label == "inconclusive: the parts disagree"
    assert "[does not hold] bn:" in verdict.evidence and "[holds] gn:" in verdict.evidence


# ------------------------------------------------------------------------------------------ finding 2


def _matched_scratch(study: Path, quality: float) -> None:
    """As many pixels as pre-training (4,000,000) + fine-tuning at 1x (300 iterations of 8 x 64 x 64): 423."""
    length = matched_iterations(4_000_000, 300, 8 * 64 * 64)
    assert length == 423
    write_scored_arm(study, "scratch_gn_matched_seed0", init="scratch", schedule=f"{length / 300}x",
                     curve=[(100, 0.3), (200, 0.5), (length, quality)])  # fmt: skip


def test_finding_2_holds_with_an_early_lead_and_a_cost_matched_catch_up(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.6, 0.8), early=0.3)
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6)
    _matched_scratch(tmp_path, 0.8)
    verdict = _verdicts(tmp_path)[1]
    assert verdict.status == HOLDS, verdict.evidence
    # warm-up 10, shortest run 300: the early point is a third of the way, iteration 107 -> first evaluation 200
    assert "at iteration 200 (early point) pre-training leads by +" in verdict.evidence
    assert (
        "scratch at 1.41x (pixels x1.00 of pre-training + fine-tuning at 1x) vs pre-trained 1x: +0.0"
        in verdict.evidence
    )


def test_finding_2_is_not_tested_at_a_comparable_cost_without_a_matched_arm(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.6, 0.8), early=0.3)
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6)
    verdict = _verdicts(tmp_path)[1]
    assert verdict.label == "not tested: not tested at a comparable cost"
    assert "add `schedule: [..., matched]` (a scratch arm of 423 iterations)" in verdict.evidence


def test_finding_2_does_not_hold_when_scratch_leads_early(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8), early=0.6)
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.3)
    assert _verdicts(tmp_path)[1].status == FAILS


def test_finding_2_does_not_hold_when_scratch_leads_early_even_if_the_matched_arm_catches_up(tmp_path: Path) -> None:
    """Each condition alone decides: here the cost-matched arm is level, but pre-training does not lead early."""
    _pair(tmp_path, "scratch", (0.8, 0.8), early=0.6)
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.3)
    _matched_scratch(tmp_path, 0.8)
    verdict = _verdicts(tmp_path)[1]
    assert verdict.status == FAILS, verdict.evidence
    assert "pre-training leads by -" in verdict.evidence and "vs pre-trained 1x: +0.0" in verdict.evidence


def test_finding_2_does_not_hold_when_the_matched_arm_stays_behind(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.6, 0.8), early=0.3)
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.6)
    _matched_scratch(tmp_path, 0.5)
    assert _verdicts(tmp_path)[1].status == FAILS


def test_finding_2_is_inconclusive_when_the_early_lead_is_within_noise(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8), early=0.3)  # the same detections early: a lead of 0 [0, 0]
    _pair(tmp_path, "pretrained", (0.8, 0.8), early=0.3)
    _matched_scratch(tmp_path, 0.8)
    assert _verdicts(tmp_path)[1].label == "inconclusive: within noise"


# ------------------------------------------------------------------------------------------ finding 3


def test_finding_3_holds_when_scratch_matches_until_very_little_data(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    _pair(tmp_path, "scratch", (0.7, 0.7), subset=1000)
    _pair(tmp_path, "pretrained", (0.7, 0.7), subset=1000)
    _pair(tmp_path, "scratch", (0.3, 0.3), subset=100)
    _pair(tmp_path, "pretrained", (0.6, 0.6), subset=100)
    verdict = _verdicts(tmp_path)[2]
    assert verdict.label == "holds", verdict.evidence
    assert verdict.reason == "scratch matches down to a size, then falls behind"
    assert "[holds] 1000 images, gn" in verdict.evidence and "[does not hold] 100 images, gn" in verdict.evidence


def test_finding_3_does_not_hold_when_scratch_is_behind_on_every_reduced_set(tmp_path: Path) -> None:
    for subset in (1000, 100):
        _pair(tmp_path, "scratch", (0.4, 0.4), subset=subset)
        _pair(tmp_path, "pretrained", (0.7, 0.7), subset=subset)
    assert _verdicts(tmp_path)[2].status == FAILS


# ------------------------------------------------------------------------------------------ finding 4


def test_finding_4_holds_when_pre_training_finds_more_but_localizes_worse(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.6, 0.6), jitter=0.03, mask_jitter=0.03)
    _pair(tmp_path, "pretrained", (0.8, 0.8), jitter=0.09, mask_jitter=0.09)
    verdict = _verdicts(tmp_path)[3]
    assert verdict.status == HOLDS, verdict.evidence
    assert "AP50 minus AP75" in verdict.evidence and "AP50 minus mask AP" in verdict.evidence


def test_finding_4_does_not_hold_when_pre_training_localizes_better(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.8, 0.8), jitter=0.09, mask_jitter=0.09)
    _pair(tmp_path, "pretrained", (0.8, 0.8), jitter=0.03, mask_jitter=0.03)
    assert _verdicts(tmp_path)[3].status == FAILS


def test_finding_4_is_inconclusive_when_the_gains_are_alike(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.78, 0.78))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    assert _verdicts(tmp_path)[3].status == INCONCLUSIVE


# ---------------------------------------------------------------------------------------- the numbers


def test_an_arm_without_saved_evaluations_has_an_unknown_interval_not_a_verdict(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.5, 0.5))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    for path in (tmp_path / "arms").glob("*/evaluations/*"):
        path.unlink()
    verdict = _verdicts(tmp_path)[0]
    assert verdict.status == INCONCLUSIVE and "interval unknown" in verdict.evidence
    assert any("not saved" in c for c in verdict.conditions)


def test_a_second_seed_adds_its_spread_with_students_t(tmp_path: Path) -> None:
    _pair(tmp_path, "scratch", (0.6, 0.6))
    _pair(tmp_path, "pretrained", (0.8, 0.8))
    one_seed = Evidence(read_study(tmp_path))
    _pair(tmp_path, "scratch", (0.5, 0.5), seed=1)
    _pair(tmp_path, "pretrained", (0.8, 0.8), seed=1)
    arms = read_study(tmp_path)
    two_seeds = Evidence(arms)

    def gap(evidence: Evidence, seeds: set[int]) -> tuple[float, float, float]:
        groups = {init: [a for a in evidence.arms if a.init == init and a.multiplier == 2 and a.seed in seeds]
                  for init in ("scratch", "pretrained")}  # fmt: skip
        estimate = evidence.estimate(lambda v: v["scratch"] - v["pretrained"],
                                     {k: (g, "bbox", "AP", None) for k, g in groups.items()})  # fmt: skip
        return estimate.value, estimate.low, estimate.high

    value, low, high = gap(two_seeds, {0, 1})
    _, single_low, single_high = gap(one_seed, {0})
    per_seed = [gap(two_seeds, {s})[0] for s in (0, 1)]
    assert value == pytest.approx(np.mean(per_seed))
    seed_se = np.std(per_seed, ddof=1) / np.sqrt(2)
    assert (high - low) / 2 > t_quantile(float("inf")) * seed_se  # the seeds' spread is in the interval
    assert (high - low) > 3 * (single_high - single_low)  # 24.8 against 6.7 AP wide
    assert t_quantile(float("inf")) == pytest.approx(1.96, abs=1e-3) and t_quantile(40) == pytest.approx(
        2.021, abs=2e-3
    )


def test_nan_ap_of_an_evaluation_without_detections_counts_as_zero(tmp_path: Path) -> None:
    import json

    _pair(tmp_path, "scratch", (0.8, 0.8))
    summary_path = tmp_path / "arms" / "scratch_gn_2x_seed0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["final"]["bbox"]["AP"] = float("nan")
    summary_path.write_text(json.dumps(summary))
    arm = next(a for a in read_study(tmp_path) if a.name == "scratch_gn_2x_seed0")
    assert Evidence.value(arm, "bbox", "AP") == 0.0
