"""The paper's four findings, checked against a study's results, as statistical claims.

Each verdict is one of "holds", "does not hold", "inconclusive" (with why: within noise, not converged) or "not
tested" (with why: no such arms, no cost-matched arm, too little signal). It says "holds" or "does not hold" only
when the 95% interval of the difference it rests on (`statistics.py`: seeds and validation images) lies wholly on
one side of the rule's threshold, and, where the finding is about trained-to-the-end models, only when both inits
have converged. Each verdict states its rule, its numbers with their intervals, and the conditions it checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scratchdet.study.results import ArmResult, full_data_subset
from scratchdet.study.statistics import Estimate, Evidence, matched_iterations

HOLDS, FAILS, INCONCLUSIVE, UNTESTED = "holds", "does not hold", "inconclusive", "not tested"
MATCH_TOLERANCE = 1.0  # box AP: "scratch matches pre-training" means not more than this behind
NEEDS_A_PAIR = "needs a finished scratch and a finished pre-trained arm of the same norm"
CONVERGENCE_TOLERANCE = 1.0  # box AP: converged when the longest schedule gains less than this over half as long
SIGNAL_FLOOR = 1.0  # AP: below this on every arm compared, a comparison says nothing ("too little signal")
EARLY_FRACTION = 1 / 3  # finding 2's early point: this far from the end of warm-up to the end of the shortest run
COST_TOLERANCE = 0.10  # "a comparable total cost": pixels seen within ±10%


@dataclass(frozen=True)
class Verdict:
    finding: str
    status: str
    evidence: str
    reason: str = ""  # why inconclusive / not tested
    rule: str = ""
    conditions: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return (
            f"{self.status}: {self.reason}" if self.reason and self.status in (INCONCLUSIVE, UNTESTED) else self.status
        )


@dataclass(frozen=True)
class Part:
    """The verdict of one norm (or one training-set size): combined into the finding's verdict."""

    name: str
    status: str
    reason: str
    evidence: str


def _group(arms: list[ArmResult], init: str, norm: str, multiplier: float, subset: int | None) -> list[ArmResult]:
    """The finished arms of one configuration (one per seed)."""
    return [
        a
        for a in arms
        if (a.init, a.norm, a.multiplier, a.train_subset) == (init, norm, multiplier, subset) and a.finished
    ]


def _schedules(arms: list[ArmResult], init: str, norm: str, subset: int | None) -> list[float]:
    return sorted(
        {a.multiplier for a in arms if (a.init, a.norm, a.train_subset) == (init, norm, subset) and a.finished}
    )


def _norms(arms: list[ArmResult], subset: int | None) -> list[str]:
    """Norms with a finished scratch and a finished pre-trained arm on `subset`."""
    return [
        n
        for n in sorted({a.norm for a in arms})
        if _schedules(arms, "scratch", n, subset) and _schedules(arms, "pretrained", n, subset)
    ]


def _difference(name_a: str, name_b: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda v: v[name_a] - v[name_b]


def _mean_ap(evidence: Evidence, group: list[ArmResult]) -> float:
    return float(np.mean([evidence.value(a, "bbox", "AP") for a in group]))


def _best_schedule(evidence: Evidence, arms: list[ArmResult], init: str, norm: str, subset: int | None) -> float:
    """The schedule with the highest mean final box AP (the paper compares each init at its own best)."""
    return max(
        _schedules(arms, init, norm, subset), key=lambda m: _mean_ap(evidence, _group(arms, init, norm, m, subset))
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


def _reference_schedule(schedules: list[float]) -> float:
    """What the longest schedule is compared with to call a curve flat: the longest at most half as long (the paper
    doubles, 3x to 6x), else the next shorter one. A schedule close to the longest (a cost-matched 5.12x beside 6x)
    would call a still-rising curve flat: both end where the learning rate is low, and little separates them."""
    longest = schedules[-1]
    halves = [m for m in schedules if m <= longest / 2 + 1e-9]
    return halves[-1] if halves else schedules[-2]


def convergence(evidence: Evidence, arms: list[ArmResult], init: str, norm: str, subset: int | None) -> Convergence:
    """Whether doubling the schedule no longer pays: the gain of the longest schedule over the one it doubles
    (`_reference_schedule`; box AP, with its interval) is below CONVERGENCE_TOLERANCE as a whole."""
    schedules = _schedules(arms, init, norm, subset)
    longest = schedules[-1]
    group = _group(arms, init, norm, longest, subset)
    iterations = 2 * max(a.total_iterations for a in group)
    speeds = [a.seconds_per_iteration for a in group if not math.isnan(a.seconds_per_iteration)]
    seconds = iterations * float(np.median(speeds)) if speeds else math.nan
    step = (
        f"add a {schedule_text(2 * longest)} schedule ({iterations:,} iterations, {_duration(seconds)} per seed "
        f"at the measured speed)"
    )
    if len(schedules) < 2:
        return Convergence(False, f"{init}: one schedule ({schedule_text(longest)}), convergence not measurable", step)
    shorter = _reference_schedule(schedules)
    gain = evidence.estimate(
        _difference("long", "short"),
        {
            "long": (group, "bbox", "AP", None),
            "short": (_group(arms, init, norm, shorter, subset), "bbox", "AP", None),
        },
    )
    text = f"{init}: {schedule_text(longest)} gains {gain.text()} box AP over {schedule_text(shorter)}"
    if gain.below(CONVERGENCE_TOLERANCE):
        return Convergence(True, text + " (converged)")
    if gain.above(CONVERGENCE_TOLERANCE):
        return Convergence(False, text + " (still improving)", step)
    return Convergence(False, text + " (convergence within noise)", step)


def _judge(estimate: Estimate, threshold: float) -> tuple[str, str]:
    if estimate.above(threshold):
        return HOLDS, ""
    if estimate.below(threshold):
        return FAILS, ""
    return INCONCLUSIVE, "within noise" if estimate.known else "interval unknown (saved evaluations missing)"


def _too_little_signal(*values: float) -> bool:
    return all(math.isnan(v) or v < SIGNAL_FLOOR for v in values)


def _matching(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None, name: str) -> Part:
    """Scratch against pre-training, each at its best schedule, both converged: the core of findings 1 and 3."""
    best = {init: _best_schedule(evidence, arms, init, norm, subset) for init in ("scratch", "pretrained")}
    groups = {init: _group(arms, init, norm, best[init], subset) for init in best}
    gap = evidence.estimate(
        _difference("scratch", "pretrained"), {init: (groups[init], "bbox", "AP", None) for init in groups}
    )
    scratch, pre = _mean_ap(evidence, groups["scratch"]), _mean_ap(evidence, groups["pretrained"])
    states = [convergence(evidence, arms, init, norm, subset) for init in ("scratch", "pretrained")]
    text = (
        f"{name}: scratch {scratch:.1f} ({schedule_text(best['scratch'])}) vs pre-trained {pre:.1f} "
        f"({schedule_text(best['pretrained'])}) box AP, difference {gap.text()}; " + "; ".join(s.text for s in states)
    )
    if _too_little_signal(scratch, pre):
        return Part(name, UNTESTED, "too little signal", text)
    unconverged = [s for s in states if not s.converged]
    if unconverged:
        return Part(
            name,
            INCONCLUSIVE,
            "not converged",
            text + ". Next: " + "; ".join(f"{s.text.split(':')[0]}: {s.next_step}" for s in unconverged),
        )
    status, reason = _judge(gap, -MATCH_TOLERANCE)
    return Part(name, status, reason, text)


def _combine(title: str, parts: list[Part], rule: str, conditions: list[str], untested: str) -> Verdict:
    """One verdict from its parts: holds (fails) when every tested part holds (fails), else inconclusive."""
    if not parts:
        return Verdict(title, UNTESTED, untested, "no such arms", rule, conditions)
    tested = [p for p in parts if p.status != UNTESTED]
    statuses = {p.status for p in tested}
    # Each part is labelled only where there are several: one part's label is the verdict's own.
    evidence = (
        parts[0].evidence
        if len(parts) == 1
        else " | ".join(f"[{p.status}{': ' + p.reason if p.reason else ''}] {p.evidence}" for p in parts)
    )
    if not tested:
        return Verdict(title, UNTESTED, evidence, "; ".join(sorted({p.reason for p in parts})), rule, conditions)
    if len(statuses) == 1:
        status = statuses.pop()
        reasons = sorted({p.reason for p in tested if p.reason})
        return Verdict(title, status, evidence, "; ".join(reasons), rule, conditions)
    return Verdict(title, INCONCLUSIVE, evidence, "the parts disagree", rule, conditions)


def _conditions(evidence: Evidence, arms: list[ArmResult]) -> list[str]:
    seeds = sorted({a.seed for a in arms})
    images = ", ".join(str(n) for n in sorted(evidence.image_counts)) or "unknown"
    found = [f"seeds: {len(seeds)} ({', '.join(map(str, seeds))})", f"validation images: {images}"]
    return found + sorted(evidence.notes)


def finding_1_matching(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    title = "1. From scratch matches pre-training, given a proper norm and a long enough schedule"
    full = full_data_subset(arms)
    parts = [_matching(evidence, arms, norm, full, norm) for norm in _norms(arms, full)]
    rule = (
        f"each init at its best schedule; holds when the 95% interval of (scratch - pre-trained) box AP lies above "
        f"-{MATCH_TOLERANCE:g}, does not hold when it lies below; both inits must have converged (the longest "
        f"schedule gains less than {CONVERGENCE_TOLERANCE:g} box AP over the longest at most half as long, else "
        f"the next shorter, interval included); below {SIGNAL_FLOOR:g} box AP on both there is too little "
        f"signal"
    )
    return _combine(title, parts, rule, _conditions(evidence, arms), NEEDS_A_PAIR)


def early_iteration(arms: list[ArmResult]) -> tuple[int, int]:
    """(target, latest): finding 2's early point lies EARLY_FRACTION of the way from the end of warm-up to the end
    of the shortest schedule, and must come before that schedule's first lr step."""
    shortest = min(arms, key=lambda a: a.total_iterations)
    warmup = shortest.warmup_iters
    target = math.ceil(warmup + EARLY_FRACTION * (shortest.total_iterations - warmup))
    latest = shortest.steps[0] if shortest.steps else shortest.total_iterations
    return target, latest


def _cost_matched(arms: list[ArmResult], pre_short: list[ArmResult], norm: str, subset: int | None) -> float | None:
    """The scratch schedule whose pixels seen are within COST_TOLERANCE of pre-training + fine-tuning at the
    shortest pre-trained schedule (the closest one), or None."""
    budget = float(np.mean([a.total_pixels for a in pre_short]))
    ratios = (
        {
            m: float(np.mean([a.total_pixels for a in _group(arms, "scratch", norm, m, subset)])) / budget
            for m in _schedules(arms, "scratch", norm, subset)
        }
        if budget
        else {}
    )
    close = {m: r for m, r in ratios.items() if abs(r - 1) <= COST_TOLERANCE + 1e-9}  # ±10% inclusive at both ends
    return min(close, key=lambda m: abs(close[m] - 1)) if close else None


def _convergence_speed(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None) -> Part:
    pre_schedules = _schedules(arms, "pretrained", norm, subset)
    pre_short = _group(arms, "pretrained", norm, pre_schedules[0], subset)
    trunks = {
        init: _group(arms, init, norm, _schedules(arms, init, norm, subset)[-1], subset)
        for init in ("scratch", "pretrained")
    }
    if not all(a.pretrain_cost_known for a in pre_short):
        return Part(
            norm,
            UNTESTED,
            "pre-training cost unknown",
            f"{norm}: the pre-training cost of the weight file "
            "is unknown, so no total cost can be compared: give weights.NAME.pretrain in the study spec",
        )
    target, latest = early_iteration([*pre_short, *trunks["scratch"], *trunks["pretrained"]])
    common = set.intersection(*({i for i, _ in a.curve("bbox")} for group in trunks.values() for a in group))
    early = sorted(i for i in common if target <= i <= latest)
    if not early:
        return Part(
            norm,
            UNTESTED,
            "no evaluation at the early point",
            f"{norm}: needs an evaluation of both inits between iteration {target} and {latest}; set "
            f"eval.period to divide {target}",
        )
    iteration = early[0]
    lead = evidence.estimate(
        _difference("pretrained", "scratch"), {init: (trunks[init], "bbox", "AP", iteration) for init in trunks}
    )
    text = f"{norm}: at iteration {iteration} (early point) pre-training leads by {lead.text()} box AP"
    matched = _cost_matched(arms, pre_short, norm, subset)
    if matched is None:
        per_iteration = float(np.mean([a.counts.get("pixels", 0) / max(a.total_iterations, 1) for a in pre_short]))
        pretrain = float(np.mean([(a.pretrain_counts or {}).get("pixels", 0) for a in pre_short]))
        length = matched_iterations(pretrain, pre_short[0].total_iterations, per_iteration) if per_iteration else 0
        text += (
            f"; no scratch arm sees a comparable number of pixels to pre-training + fine-tuning at "
            f"{schedule_text(pre_schedules[0])}: add `schedule: [..., matched]` (a scratch arm of {length:,} "
            f"iterations)"
        )
        status = FAILS if lead.below(0) else UNTESTED
        return Part(norm, status, "" if status == FAILS else "not tested at a comparable cost", text)
    scratch_matched = _group(arms, "scratch", norm, matched, subset)
    ratio = np.mean([a.total_pixels for a in scratch_matched]) / np.mean([a.total_pixels for a in pre_short])
    gap = evidence.estimate(
        _difference("scratch", "pretrained"),
        {"scratch": (scratch_matched, "bbox", "AP", None), "pretrained": (pre_short, "bbox", "AP", None)},
    )
    short = schedule_text(pre_schedules[0])
    text += (
        f"; scratch at {schedule_text(matched)} (pixels x{ratio:.2f} of pre-training + fine-tuning at {short}) "
        f"vs pre-trained {short}: {gap.text()} box AP"
    )
    if lead.below(0) or gap.below(-MATCH_TOLERANCE):
        return Part(norm, FAILS, "", text)
    if _too_little_signal(_mean_ap(evidence, scratch_matched), _mean_ap(evidence, pre_short)):
        return Part(norm, UNTESTED, "too little signal", text)
    if lead.above(0) and gap.above(-MATCH_TOLERANCE):
        return Part(norm, HOLDS, "", text)
    return Part(norm, INCONCLUSIVE, "within noise" if lead.known and gap.known else "interval unknown", text)


def finding_2_convergence(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    title = "2. Pre-training speeds up convergence, but scratch catches up at a comparable total cost"
    full = full_data_subset(arms)
    parts = [_convergence_speed(evidence, arms, norm, full) for norm in _norms(arms, full)]
    rule = (
        f"holds when, early (the first evaluation at least {EARLY_FRACTION:.2g} of the way from the end of warm-up "
        f"to the end of the shortest schedule, before its first lr step), pre-training leads (interval above 0), "
        f"and a scratch arm that sees as many pixels (±{COST_TOLERANCE:.0%}) as pre-training + fine-tuning at "
        f"the shortest schedule ends no more than {MATCH_TOLERANCE:g} box AP behind it (interval above "
        f"-{MATCH_TOLERANCE:g}); does not hold when either interval lies on the other side"
    )
    return _combine(title, parts, rule, _conditions(evidence, arms), NEEDS_A_PAIR)


def finding_3_less_data(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    title = "3. Pre-training does not automatically regularize: with less data scratch still matches, until very little"
    full = full_data_subset(arms)
    reduced = sorted({a.train_subset for a in arms if a.train_subset not in (None, full) and a.finished}, reverse=True)
    parts = []
    for subset in reduced:
        for norm in _norms(arms, subset):
            images = max(a.train_images for a in arms if a.train_subset == subset) or subset
            parts.append(_matching(evidence, arms, norm, subset, f"{images} images, {norm}"))
    rule = (
        "on every reduced training set, as finding 1: each init at its best schedule, both converged; holds when "
        "scratch matches on every reduced set, does not hold when it falls behind on every one; a set where it "
        "matches above a set where it does not is the paper's 'until very little'"
    )
    verdict = _combine(
        title,
        parts,
        rule,
        _conditions(evidence, arms),
        "needs scratch and pre-trained arms on a training subset (axis train_subset)",
    )
    statuses = [p.status for p in parts if p.status in (HOLDS, FAILS)]
    if statuses and statuses == sorted(statuses, key=lambda s: s == FAILS) and len(set(statuses)) == 2:
        return Verdict(
            title,
            HOLDS,
            verdict.evidence,
            "scratch matches down to a size, then falls behind",
            rule,
            verdict.conditions,
        )
    return verdict


def _relative_gain(task: str, metric: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def gain(v: dict[str, np.ndarray]) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # scratch at 0 AP: caught by the signal floor
            return 100 * (v[f"pretrained {task} {metric}"] / v[f"scratch {task} {metric}"] - 1)

    return gain


def _gain_difference(task: str, metric: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Relative gain in AP50 minus relative gain in `metric` (percentage points)."""
    return lambda v: _relative_gain("bbox", "AP50")(v) - _relative_gain(task, metric)(v)


def _localization(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None) -> Part:
    common = sorted(set(_schedules(arms, "scratch", norm, subset)) & set(_schedules(arms, "pretrained", norm, subset)))
    if not common:
        return Part(norm, UNTESTED, "no common schedule", f"{norm}: no schedule with both inits")
    longest = common[-1]
    groups = {init: _group(arms, init, norm, longest, subset) for init in ("scratch", "pretrained")}
    metrics = [("bbox", "AP50", "AP50"), ("bbox", "AP75", "AP75")]
    sample = groups["scratch"][0].final or {}
    metrics += [
        (task, "AP", label) for task, label in (("segm", "mask AP"), ("keypoints", "keypoint AP")) if task in sample
    ]
    inputs = {
        f"{init} {task} {metric}": (groups[init], task, metric, None) for init in groups for task, metric, _ in metrics
    }
    scratch_values = {
        label: float(np.mean([evidence.value(a, t, m) for a in groups["scratch"]])) for t, m, label in metrics
    }
    gains = {label: evidence.estimate(_relative_gain(t, m), inputs) for t, m, label in metrics}
    text = f"{norm} {schedule_text(longest)}: relative gain of pre-training " + ", ".join(
        f"{label} {gains[label].text('%')}" for _, _, label in metrics
    )
    if any(v < SIGNAL_FLOOR for v in scratch_values.values()):
        low = [label for label, v in scratch_values.items() if v < SIGNAL_FLOOR]
        return Part(
            norm, UNTESTED, "too little signal", text + f" (scratch below {SIGNAL_FLOOR:g} in {', '.join(low)})"
        )
    judged = []
    for task, metric, label in metrics[1:]:
        difference = evidence.estimate(_gain_difference(task, metric), inputs)
        text += f"; AP50 minus {label}: {difference.text(' points')}"
        judged.append(_judge(difference, 0.0))
    statuses = {s for s, _ in judged}
    if statuses == {HOLDS}:
        return Part(norm, HOLDS, "", text)
    if FAILS in statuses:
        return Part(norm, FAILS, "", text)
    return Part(norm, INCONCLUSIVE, next(r for s, r in judged if s == INCONCLUSIVE), text)


def finding_4_localization(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    title = "4. Pre-training helps less for localization-sensitive metrics (AP75, mask AP) than for AP50"
    full = full_data_subset(arms)
    parts = [_localization(evidence, arms, norm, full) for norm in _norms(arms, full)]
    rule = (
        "at the longest schedule both inits share, the relative gain of pre-training (pre-trained / scratch - 1) "
        "in AP50 against AP75, mask AP and keypoint AP where present; holds when the AP50 gain exceeds each of "
        "them (interval of the difference above 0), does not hold when any interval lies below 0; a metric "
        f"below {SIGNAL_FLOOR:g} AP for scratch gives too little signal"
    )
    return _combine(title, parts, rule, _conditions(evidence, arms), NEEDS_A_PAIR)


FINDINGS = (finding_1_matching, finding_2_convergence, finding_3_less_data, finding_4_localization)


def all_verdicts(arms: list[ArmResult], evidence: Evidence | None = None) -> list[Verdict]:
    """The four findings; with several pre-trained inits (the study's own, published weight files), the four for
    each, scratch against that init alone."""
    evidence = evidence or Evidence(arms)
    names = sorted({a.init_name for a in arms if a.init != "scratch"})
    if len(names) <= 1:
        return [finding(arms, evidence) for finding in FINDINGS]
    verdicts = []
    for name in names:
        chosen = [a for a in arms if a.init == "scratch" or a.init_name == name]
        for finding in FINDINGS:
            verdict = finding(chosen, evidence)
            verdicts.append(dataclasses.replace(verdict, finding=f"{verdict.finding} (pre-trained: {name})"))
    return verdicts
