"""The paper's four findings, checked against a study's results (the rules they share: `verdicts.py`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from scratchdet.study.convergence import (
    CONVERGENCE_RATIO,
    CONVERGENCE_TOLERANCE,
    arm_group,
    best_schedule,
    convergence,
    difference,
    finished_schedules,
    paired_norms,
    schedule_text,
)
from scratchdet.study.intervals import LEVEL, Estimate, Evidence
from scratchdet.study.results import ArmResult, full_data_subset
from scratchdet.study.spec import matched_iterations
from scratchdet.study.verdicts import (
    COST_TOLERANCE,
    EARLY_FRACTION,
    MATCH_TOLERANCE,
    NEEDS_A_PAIR,
    SIGNAL_FLOOR,
    Finding,
    Part,
    Status,
    Verdict,
    combine,
    conditions_of,
    judge,
    judge_all,
    seeds_note,
    too_little_signal,
    unconverged,
)


def _matching(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None, name: str) -> Part:
    """Scratch against pre-training, each at its best schedule, both converged: the core of findings 1 and 3."""
    best = {init: best_schedule(evidence, arms, init, norm, subset) for init in ("scratch", "pretrained")}
    groups = {init: arm_group(arms, init, norm, best[init], subset) for init in best}
    gap = evidence.estimate(
        difference("scratch", "pretrained"), {init: (groups[init], "bbox", "AP", None) for init in groups}
    )
    scratch, pre = gap.means.get("scratch", math.nan), gap.means.get("pretrained", math.nan)
    states = [convergence(evidence, arms, init, norm, subset) for init in ("scratch", "pretrained")]
    text = (
        f"{name}: scratch {scratch:.1f} ({schedule_text(best['scratch'])}) vs pre-trained {pre:.1f} "
        f"({schedule_text(best['pretrained'])}) box AP, difference {gap.text()}{seeds_note(gap)}; "
        + "; ".join(s.text for s in states)
    )
    if too_little_signal(scratch, pre):
        return Part(name, Status.UNTESTED, "too little signal", text)
    if not all(s.converged for s in states):
        return Part(name, Status.INCONCLUSIVE, "not converged", text + ". Next: " + unconverged(states))
    status, reason = judge(gap, -MATCH_TOLERANCE)
    return Part(name, status, reason, text)


def finding_1_matching(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    finding = Finding.MATCHING
    full = full_data_subset(arms)
    parts = [_matching(evidence, arms, norm, full, norm) for norm in paired_norms(arms, full)]
    rule = (
        f"each init at its best schedule; holds when the 95% interval of (scratch - pre-trained) box AP lies above "
        f"-{MATCH_TOLERANCE:g}, does not hold when it lies below; both inits must have converged (the longest "
        f"schedule gains less than {CONVERGENCE_TOLERANCE:g} box AP, interval included, over the longest schedule "
        f"at least {CONVERGENCE_RATIO:g} times shorter); a decided verdict needs two seeds or more; below "
        f"{SIGNAL_FLOOR:g} box AP on both there is too little signal"
    )
    return combine(finding, parts, rule, conditions_of(evidence, arms), NEEDS_A_PAIR)


def early_iteration(arms: list[ArmResult]) -> tuple[int, int]:
    """(target, latest): finding 2's early point lies EARLY_FRACTION of the way from the end of warm-up to the end
    of the shortest schedule, and must come before that schedule's first lr step."""
    shortest = min(arms, key=lambda a: a.total_iterations)
    warmup = shortest.warmup_iters
    target = math.ceil(warmup + EARLY_FRACTION * (shortest.total_iterations - warmup))
    latest = shortest.steps[0] if shortest.steps else shortest.total_iterations
    return target, latest


def _cost_matched(arms: list[ArmResult], pre: list[ArmResult], norm: str, subset: int | None) -> float | None:
    """The scratch schedule whose pixels seen are within COST_TOLERANCE of pre-training + fine-tuning of the
    pre-trained arms `pre` (the closest one), or None."""
    budget = float(np.mean([a.total_pixels for a in pre]))
    ratios = (
        {
            m: float(np.mean([a.total_pixels for a in arm_group(arms, "scratch", norm, m, subset)])) / budget
            for m in finished_schedules(arms, "scratch", norm, subset)
        }
        if budget
        else {}
    )
    close = {m: r for m, r in ratios.items() if abs(r - 1) <= COST_TOLERANCE + 1e-9}  # ±10% inclusive at both ends
    return min(close, key=lambda m: abs(close[m] - 1)) if close else None


def _early_lead(
    evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None
) -> tuple[Estimate | None, str]:
    """Pre-training's lead at finding 2's early point on the longest arm of each init, with its text (or None and
    the reason no evaluation lies there)."""
    shortest = arm_group(arms, "pretrained", norm, finished_schedules(arms, "pretrained", norm, subset)[0], subset)
    trunks = {
        init: arm_group(arms, init, norm, finished_schedules(arms, init, norm, subset)[-1], subset)
        for init in ("scratch", "pretrained")
    }
    target, latest = early_iteration([*shortest, *trunks["scratch"], *trunks["pretrained"]])
    common = set.intersection(*({i for i, _ in a.curve("bbox")} for group in trunks.values() for a in group))
    early = sorted(i for i in common if target <= i <= latest)
    if not early:
        return None, (
            f"{norm}: needs an evaluation of both inits between iteration {target} and {latest}; set eval.period to "
            f"divide {target}"
        )
    lead = evidence.estimate(
        difference("pretrained", "scratch"), {init: (trunks[init], "bbox", "AP", early[0]) for init in trunks}
    )
    return lead, f"{norm}: at iteration {early[0]} (early point) pre-training leads by {lead.text()} box AP"


def _convergence_speed(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None) -> Part:
    """Finding 2 for one norm: pre-training ahead early, and a scratch arm as costly as pre-training + the
    fine-tuning of pre-training's converged best schedule ending level with it."""
    best = best_schedule(evidence, arms, "pretrained", norm, subset)
    pre_best = arm_group(arms, "pretrained", norm, best, subset)
    if not all(a.pretrain_cost_known for a in pre_best):
        return Part(
            norm,
            Status.UNTESTED,
            "pre-training cost unknown",
            f"{norm}: the pre-training cost of the weight file "
            "is unknown, so no total cost can be compared: give weights.NAME.pretrain in the study spec",
        )
    lead, text = _early_lead(evidence, arms, norm, subset)
    if lead is None:
        return Part(norm, Status.UNTESTED, "no evaluation at the early point", text)
    pre_state = convergence(evidence, arms, "pretrained", norm, subset)
    matched = _cost_matched(arms, pre_best, norm, subset)
    if matched is None:
        per_iteration = float(np.mean([a.counts.get("pixels", 0) / max(a.total_iterations, 1) for a in pre_best]))
        pretrain = float(np.mean([(a.pretrain_counts or {}).get("pixels", 0) for a in pre_best]))
        length = matched_iterations(pretrain, pre_best[0].total_iterations, per_iteration) if per_iteration else 0
        text += (
            f"; no scratch arm sees a comparable number of pixels to pre-training + fine-tuning at "
            f"{schedule_text(best)} (pre-training's best schedule): add `schedule: [..., "
            f"matched@{schedule_text(best)}]` (a scratch arm of {length:,} iterations)"
        )
        gap = None
    else:
        scratch_matched = arm_group(arms, "scratch", norm, matched, subset)
        ratio = np.mean([a.total_pixels for a in scratch_matched]) / np.mean([a.total_pixels for a in pre_best])
        gap = evidence.estimate(
            difference("scratch", "pretrained"),
            {"scratch": (scratch_matched, "bbox", "AP", None), "pretrained": (pre_best, "bbox", "AP", None)},
        )
        text += (
            f"; scratch at {schedule_text(matched)} ({gap.means['scratch']:.1f} box AP; pixels x{ratio:.2f} of "
            f"pre-training + fine-tuning at {schedule_text(best)}) vs pre-trained {schedule_text(best)} "
            f"({gap.means['pretrained']:.1f}, its best schedule): {gap.text()} box AP{seeds_note(gap)}"
        )
    text += f"; {pre_state.text}"
    values = [*lead.means.values(), *(gap.means.values() if gap else ())]
    if too_little_signal(*values):
        return Part(norm, Status.UNTESTED, "too little signal", text)
    early = judge(lead, 0.0)
    if early[0] == Status.FAILS:  # pre-training does not speed up convergence: decided whatever the end shows
        return Part(norm, Status.FAILS, "", text)
    if not pre_state.converged:
        return Part(norm, Status.INCONCLUSIVE, "not converged", f"{text}. Next: pretrained: {pre_state.next_step}")
    if gap is None:
        return Part(norm, Status.UNTESTED, "not tested at a comparable cost", text)
    status, reason = judge_all([early, judge(gap, -MATCH_TOLERANCE)])
    return Part(norm, status, reason, text)


def finding_2_convergence(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    finding = Finding.CONVERGENCE
    full = full_data_subset(arms)
    parts = [_convergence_speed(evidence, arms, norm, full) for norm in paired_norms(arms, full)]
    rule = (
        f"holds when, early (the first evaluation at least {EARLY_FRACTION:.2g} of the way from the end of warm-up "
        f"to the end of the shortest schedule, before its first lr step), pre-training leads (interval above 0), "
        f"and a scratch arm that sees as many pixels (±{COST_TOLERANCE:.0%}) as pre-training + fine-tuning at "
        f"pre-training's best schedule, which must have converged (as in {Finding.MATCHING.cite}), ends no more "
        f"than {MATCH_TOLERANCE:g} box AP behind it (interval above -{MATCH_TOLERANCE:g}); does not hold when either "
        "interval lies on the other side; a decided verdict needs two seeds or more"
    )
    return combine(finding, parts, rule, conditions_of(evidence, arms), NEEDS_A_PAIR)


def _size_verdict(norm: str, parts: list[Part]) -> Part:
    """One norm's verdict over its reduced training sets (`parts`, largest first): holds when scratch matches on
    every one, or matches down to a size and falls behind below it (the paper's 'until very little'); does not hold
    when it falls behind on every one; inconclusive when a set is undecided or a smaller set matches where a larger
    one does not."""
    evidence = " | ".join(f"[{p.status}{': ' + p.reason if p.reason else ''}] {p.evidence}" for p in parts)
    tested = [p for p in parts if p.status != Status.UNTESTED]
    if not tested:
        return Part(norm, Status.UNTESTED, "; ".join(sorted({p.reason for p in parts})), evidence)
    undecided = [p for p in tested if p.status not in (Status.HOLDS, Status.FAILS)]
    if undecided:
        return Part(norm, Status.INCONCLUSIVE, "; ".join(sorted({p.reason for p in undecided})), evidence)
    statuses = [p.status for p in tested]
    if len(set(statuses)) == 1:
        return Part(norm, statuses[0], "", evidence)
    if statuses == sorted(
        statuses, key=lambda s: s == Status.FAILS
    ):  # every set that matches is larger than every other
        return Part(norm, Status.HOLDS, "scratch matches down to a size, then falls behind", evidence)
    return Part(norm, Status.INCONCLUSIVE, "a smaller set matches where a larger one does not", evidence)


def finding_3_less_data(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    finding = Finding.LESS_DATA
    full = full_data_subset(arms)
    reduced = sorted({a.train_subset for a in arms if a.train_subset not in (None, full) and a.finished}, reverse=True)
    parts = []
    for norm in sorted({n for subset in reduced for n in paired_norms(arms, subset)}):
        sizes = []
        for subset in (s for s in reduced if norm in paired_norms(arms, s)):
            images = max(a.train_images for a in arms if a.train_subset == subset) or subset
            sizes.append(_matching(evidence, arms, norm, subset, f"{images} images, {norm}"))
        parts.append(_size_verdict(norm, sizes))
    rule = (
        f"for each norm, on every reduced training set, as {Finding.MATCHING.cite} (each init at its best schedule, "
        "both converged, two seeds or more): holds when scratch matches on every reduced set, or matches down to a "
        "size and falls behind on every smaller one (the paper's 'until very little'); does not hold when it falls "
        f"behind on every one; the norms then combine as in {Finding.MATCHING.cite}"
    )
    verdict = combine(
        finding,
        parts,
        rule,
        conditions_of(evidence, arms),
        "needs scratch and pre-trained arms on a training subset (axis train_subset)",
    )
    return verdict


def _log_ratio(task: str, metric: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """log(pre-trained / scratch): the relative gain on the scale where its interval is symmetric."""
    return lambda v: np.log(v[f"pretrained {task} {metric}"]) - np.log(v[f"scratch {task} {metric}"])


def _gain(task: str, metric: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The absolute gain of pre-training in AP points."""
    return lambda v: v[f"pretrained {task} {metric}"] - v[f"scratch {task} {metric}"]


def _gain_difference(task: str, metric: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The gain in AP50 minus the gain in `metric` (AP points)."""
    return lambda v: _gain("bbox", "AP50")(v) - _gain(task, metric)(v)


def _localization(evidence: Evidence, arms: list[ArmResult], norm: str, subset: int | None) -> Part:
    common = sorted(
        set(finished_schedules(arms, "scratch", norm, subset))
        & set(finished_schedules(arms, "pretrained", norm, subset))
    )
    if not common:
        return Part(norm, Status.UNTESTED, "no common schedule", f"{norm}: no schedule with both inits")
    longest = common[-1]
    groups = {init: arm_group(arms, init, norm, longest, subset) for init in ("scratch", "pretrained")}
    metrics = [("bbox", "AP50", "AP50"), ("bbox", "AP75", "AP75")]
    sample = groups["scratch"][0].final or {}
    metrics += [
        (task, "AP", label) for task, label in (("segm", "mask AP"), ("keypoints", "keypoint AP")) if task in sample
    ]
    inputs = {
        f"{init} {task} {metric}": (groups[init], task, metric, None) for init in groups for task, metric, _ in metrics
    }
    gains = {label: evidence.estimate(_gain(t, m), inputs) for t, m, label in metrics}
    ratios = {label: evidence.estimate(_log_ratio(t, m), inputs) for t, m, label in metrics}
    text = f"{norm} {schedule_text(longest)}: gain of pre-training " + ", ".join(
        f"{label} {gains[label].text(' points')} ({ratios[label].percent_text()})" for _, _, label in metrics
    )
    means = gains["AP50"].means
    low = [
        label
        for t, m, label in metrics
        if too_little_signal(means.get(f"scratch {t} {m}", math.nan), means.get(f"pretrained {t} {m}", math.nan))
    ]
    if low:
        below = f" (both inits below {SIGNAL_FLOOR:g} in {', '.join(low)})"
        return Part(norm, Status.UNTESTED, "too little signal", text + below)
    corrected = _family_level(len(metrics) - 1)
    differences = []
    for task, metric, label in metrics[1:]:
        difference = evidence.estimate(_gain_difference(task, metric), inputs)
        text += f"; AP50 gain minus {label} gain: {difference.text(' points')}"
        if len(metrics) > 2 and difference.known:
            low_c, high_c = difference.bounds(corrected)
            text += f" ({corrected:.1%}: [{low_c:+.1f}, {high_c:+.1f}])"
        differences.append(difference)
    text += seeds_note(differences[0])
    states = [convergence(evidence, arms, init, norm, subset) for init in ("scratch", "pretrained")]
    text += "; " + "; ".join(s.text for s in states)
    if not all(s.converged for s in states):
        return Part(norm, Status.INCONCLUSIVE, "not converged", text + ". Next: " + unconverged(states))
    status, reason = localization_judgement(differences)
    return Part(norm, status, reason, text)


def _family_level(comparisons: int) -> float:
    """The level at which one of `comparisons` intervals must exclude 0 for "any one fails" to keep a 5% error
    (Bonferroni)."""
    return 1 - (1 - LEVEL) / comparisons


def localization_judgement(differences: list[Estimate]) -> tuple[Status, str]:
    """Finding 4 from (AP50 gain - other gain) differences: holds when every 95% interval lies above 0 (each must
    hold, so no correction is needed); does not hold when one lies below 0 at the Bonferroni level of the family
    (any one of k failing would otherwise fire k times as often as 5%)."""
    corrected = _family_level(len(differences))
    fails = [judge(d, 0.0, corrected) for d in differences]
    if any(s == Status.FAILS for s, _ in fails):
        return Status.FAILS, ""
    judged = [judge(d, 0.0) for d in differences]
    if all(s == Status.HOLDS for s, _ in judged):
        return Status.HOLDS, ""
    reasons = [r for s, r in [*judged, *fails] if s == Status.INCONCLUSIVE]  # one below 0 at 95% only: within noise
    return Status.INCONCLUSIVE, "; ".join(dict.fromkeys(reasons))


def finding_4_localization(arms: list[ArmResult], evidence: Evidence) -> Verdict:
    finding = Finding.LOCALIZATION
    full = full_data_subset(arms)
    parts = [_localization(evidence, arms, norm, full) for norm in paired_norms(arms, full)]
    rule = (
        f"at the longest schedule both inits share, both converged (as in {Finding.MATCHING.cite}), the gain of "
        "pre-training in AP points (pre-trained - scratch, as the paper's tables set AP50 and AP75 side by side) in "
        "AP50 against AP75, "
        "mask AP and keypoint AP where present; holds when the AP50 gain exceeds each of them (every interval of "
        f"the difference above 0, at {LEVEL:.0%}), does not hold when one lies below 0 at 95% divided among the "
        "comparisons (Bonferroni); relative gains (pre-trained / scratch - 1, intervals from log ratios) are shown, "
        f"not judged; a decided verdict needs two seeds or more; a metric below {SIGNAL_FLOOR:g} AP on both inits "
        "gives too little signal"
    )
    return combine(finding, parts, rule, conditions_of(evidence, arms), NEEDS_A_PAIR)


CHECKS: dict[Finding, Callable[[list[ArmResult], Evidence], Verdict]] = {
    Finding.MATCHING: finding_1_matching,
    Finding.CONVERGENCE: finding_2_convergence,
    Finding.LESS_DATA: finding_3_less_data,
    Finding.LOCALIZATION: finding_4_localization,
}


def all_verdicts(arms: list[ArmResult], evidence: Evidence | None = None) -> list[Verdict]:
    """The four findings; with several pre-trained inits (the study's own, published weight files), the four for
    each, scratch against that init alone."""
    evidence = evidence or Evidence(arms)
    names = sorted({a.init_name for a in arms if a.init != "scratch"})
    chosen_sets = (
        [(None, arms)]
        if len(names) <= 1
        else [(name, [a for a in arms if a.init == "scratch" or a.init_name == name]) for name in names]
    )
    verdicts = []
    for name, chosen in chosen_sets:
        for finding in Finding:
            evidence.used_images.clear()  # each verdict's conditions name the validation sets it used
            verdict = CHECKS[finding](chosen, evidence)
            if name is not None:
                verdict = dataclasses.replace(verdict, init=name)
            verdicts.append(verdict)
    return verdicts
