"""The paper's four findings, checked against a study's results: "holds", "does not hold", or "not tested".

Each verdict states its evidence in numbers and its rule, so a reader can disagree with the threshold but not
with the data. Means over seeds are used throughout; "full data" is the arms without a training subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scratchdet.study.results import ArmResult, curve_mean, final_mean, full_data_subset

HOLDS, FAILS, UNTESTED = "holds", "does not hold", "not tested by this study"
MATCH_TOLERANCE = 1.0  # box AP: "scratch matches pre-training" means within this, or ahead
EARLY_LEAD = 2.0  # box AP: "pre-training converges faster" means ahead by at least this early on


@dataclass(frozen=True)
class Verdict:
    finding: str
    status: str
    evidence: str


def _select(arms: list[ArmResult], *, init: str, norm: str | None = None, multiplier: float | None = None,
            subset: int | str | None = "any") -> list[ArmResult]:  # fmt: skip
    return [
        a for a in arms
        if a.init == init and (norm is None or a.norm == norm) and (multiplier is None or a.multiplier == multiplier)
        and (subset == "any" or a.train_subset == subset) and a.finished
    ]  # fmt: skip


def _pairs(arms: list[ArmResult], subset: int | None) -> list[tuple[str, float]]:
    """(norm, schedule multiplier) pairs that have both a scratch and a pre-trained arm on `subset`."""
    found = []
    for norm in sorted({a.norm for a in arms}):
        for multiplier in sorted({a.multiplier for a in arms}):
            if _select(arms, init="scratch", norm=norm, multiplier=multiplier, subset=subset) and _select(
                arms, init="pretrained", norm=norm, multiplier=multiplier, subset=subset
            ):
                found.append((norm, multiplier))
    return found


def _gap(
    arms: list[ArmResult], norm: str, multiplier: float, subset: int | None, task: str, name: str
) -> tuple[float, float, float]:
    """(scratch, pre-trained, scratch - pre-trained) of a final metric."""
    scratch = final_mean(_select(arms, init="scratch", norm=norm, multiplier=multiplier, subset=subset), task, name)
    pre = final_mean(_select(arms, init="pretrained", norm=norm, multiplier=multiplier, subset=subset), task, name)
    return scratch, pre, scratch - pre


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}"


def finding_1_matching(arms: list[ArmResult]) -> Verdict:
    title = "1. From scratch matches pre-training, given a proper norm and a long enough schedule"
    full = full_data_subset(arms)
    pairs = _pairs(arms, full)
    if not pairs:
        return Verdict(title, UNTESTED, "needs a scratch and a pre-trained arm of the same norm and schedule.")
    longest = {norm: max(m for n, m in pairs if n == norm) for norm, _ in pairs}
    parts, holds = [], True
    for norm, multiplier in sorted(longest.items()):
        scratch, pre, gap = _gap(arms, norm, multiplier, full, "bbox", "AP")
        holds &= gap >= -MATCH_TOLERANCE
        parts.append(f"{norm} at {multiplier:g}x: scratch {_fmt(scratch)} vs pre-trained {_fmt(pre)} box AP "
                     f"({gap:+.1f})")  # fmt: skip
    rule = f"holds when scratch is within {MATCH_TOLERANCE:g} box AP of pre-training, or ahead, at the longest schedule"
    return Verdict(title, HOLDS if holds else FAILS, "; ".join(parts) + f". Rule: {rule}.")


def finding_2_convergence(arms: list[ArmResult]) -> Verdict:
    title = "2. Pre-training speeds up convergence, but scratch catches up at a comparable total cost"
    full = full_data_subset(arms)
    pairs = _pairs(arms, full)
    if not pairs:
        return Verdict(title, UNTESTED, "needs a scratch and a pre-trained arm of the same norm.")
    norm = pairs[0][0]
    shortest = min(m for n, m in pairs if n == norm)
    longest = max(m for n, m in pairs if n == norm)
    scratch_arms = _select(arms, init="scratch", norm=norm, subset=full)
    pre_arms = _select(arms, init="pretrained", norm=norm, subset=full)
    short_length = min(a.total_iterations for a in scratch_arms if a.multiplier == shortest)
    early = sorted(
        {i for a in scratch_arms for i, _ in a.curve("bbox")} & {i for a in pre_arms for i, _ in a.curve("bbox")}
    )
    early = [i for i in early if 0 < i <= short_length / 3]
    if not early:
        return Verdict(title, UNTESTED, f"needs an evaluation within the first third of the {shortest:g}x schedule "
                       f"(iteration <= {short_length // 3}); set eval.period lower.")  # fmt: skip
    iteration = early[0]
    lead = curve_mean(pre_arms, "bbox", iteration) - curve_mean(scratch_arms, "bbox", iteration)
    scratch_end, pre_end, gap = _gap(arms, norm, longest, full, "bbox", "AP")
    evidence = (f"at iteration {iteration} (first third of {shortest:g}x) pre-training leads by {lead:+.1f} box AP; "
                f"at {longest:g}x scratch {_fmt(scratch_end)} vs pre-trained {_fmt(pre_end)} ({gap:+.1f})")  # fmt: skip
    evidence += _cost_evidence(scratch_arms, pre_arms, longest, shortest)
    holds = lead >= EARLY_LEAD and gap >= -MATCH_TOLERANCE
    rule = (f"holds when pre-training leads by at least {EARLY_LEAD:g} box AP early and scratch ends within "
            f"{MATCH_TOLERANCE:g} box AP at the longest schedule")  # fmt: skip
    return Verdict(title, HOLDS if holds else FAILS, f"{evidence}. Rule: {rule}.")


def _cost_evidence(scratch: list[ArmResult], pre: list[ArmResult], longest: float, shortest: float) -> str:
    """Images/instances/pixels: scratch at the longest schedule vs pre-training + fine-tuning at the shortest."""
    scratch_long = next((a for a in scratch if a.multiplier == longest), None)
    pre_short = next((a for a in pre if a.multiplier == shortest), None)
    if scratch_long is None or pre_short is None or not scratch_long.counts or not pre_short.counts:
        return ""
    parts = []
    for kind in ("images", "instances", "pixels"):
        total = pre_short.counts.get(kind, 0) + (pre_short.pretrain_counts or {}).get(kind, 0)
        ratio = scratch_long.counts.get(kind, 0) / total if total else math.nan
        parts.append(f"{kind} x{ratio:.2f}")
    return (f"; scratch at {longest:g}x sees, relative to pre-training + fine-tuning at {shortest:g}x: "
            + ", ".join(parts))  # fmt: skip


def finding_3_less_data(arms: list[ArmResult]) -> Verdict:
    title = "3. Pre-training does not automatically regularize: with less data scratch still matches, until very little"
    subsets = sorted({a.train_subset for a in arms if a.train_subset is not None and a.finished})
    full = full_data_subset(arms)
    reduced = [s for s in subsets if s != full]
    pairs = {s: _pairs(arms, s) for s in reduced}
    reduced = [s for s in reduced if pairs[s]]
    if not reduced:
        return Verdict(title, UNTESTED, "needs scratch and pre-trained arms on a training subset (axis train_subset).")
    parts = []
    for subset in sorted(reduced, reverse=True):
        norm = pairs[subset][0][0]
        longest = max(m for n, m in pairs[subset] if n == norm)
        scratch, pre, gap = _gap(arms, norm, longest, subset, "bbox", "AP")
        parts.append(f"{subset} images ({norm}, {longest:g}x): scratch {_fmt(scratch)} vs pre-trained {_fmt(pre)} "
                     f"({gap:+.1f})")  # fmt: skip
    largest = max(reduced)
    norm = pairs[largest][0][0]
    gap = _gap(arms, norm, max(m for n, m in pairs[largest] if n == norm), largest, "bbox", "AP")[2]
    holds = gap >= -MATCH_TOLERANCE
    rule = (f"holds when scratch is within {MATCH_TOLERANCE:g} box AP of pre-training on the largest reduced "
            "training set; the smaller sets show where that stops")  # fmt: skip
    return Verdict(title, HOLDS if holds else FAILS, "; ".join(parts) + f". Rule: {rule}.")


def finding_4_localization(arms: list[ArmResult]) -> Verdict:
    title = "4. Pre-training helps less for localization-sensitive metrics (AP75, mask AP) than for AP50"
    full = full_data_subset(arms)
    pairs = _pairs(arms, full)
    if not pairs:
        return Verdict(title, UNTESTED, "needs a scratch and a pre-trained arm of the same norm and schedule.")
    gains50, gains75, parts = [], [], []
    for norm, multiplier in pairs:
        gain50 = -_gap(arms, norm, multiplier, full, "bbox", "AP50")[2]
        gain75 = -_gap(arms, norm, multiplier, full, "bbox", "AP75")[2]
        gain_mask = -_gap(arms, norm, multiplier, full, "segm", "AP")[2]
        gains50.append(gain50)
        gains75.append(gain75)
        parts.append(f"{norm} {multiplier:g}x: gain AP50 {gain50:+.1f}, AP75 {gain75:+.1f}, mask AP {_fmt(gain_mask)}")
    mean50, mean75 = sum(gains50) / len(gains50), sum(gains75) / len(gains75)
    holds = mean75 < mean50
    rule = "holds when the mean gain of pre-training in AP75 is below its mean gain in AP50"
    return Verdict(title, HOLDS if holds else FAILS, "; ".join(parts) + f". Rule: {rule}.")


def all_verdicts(arms: list[ArmResult]) -> list[Verdict]:
    return [finding_1_matching(arms), finding_2_convergence(arms), finding_3_less_data(arms),
            finding_4_localization(arms)]  # fmt: skip
