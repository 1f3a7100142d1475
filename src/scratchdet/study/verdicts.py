"""What a verdict is: its status, the finding it is about, and the rules every finding's check shares.

Each verdict is one of "holds", "does not hold", "inconclusive" (with why: within noise, not converged, one seed)
or "not tested" (with why: no such arms, no cost-matched arm, too little signal). It says "holds" or "does not
hold" only when the 95% interval of the difference it rests on (`intervals.py`: seeds and validation images) lies
wholly on one side of the rule's threshold, that interval holds training noise (two seeds or more), and, where the
finding is about trained-to-the-end models, both inits have converged. Each verdict states its rule, its numbers
with their intervals, and the conditions it checked. The checks of the four findings are in `findings.py`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from scratchdet.study.convergence import Convergence
from scratchdet.study.intervals import LEVEL, Estimate, Evidence
from scratchdet.study.results import ArmResult


class Status(enum.StrEnum):
    HOLDS = "holds"
    FAILS = "does not hold"
    INCONCLUSIVE = "inconclusive"
    UNTESTED = "not tested"

    @property
    def css_class(self) -> str:
        return {"does not hold": "fails", "not tested": "untested"}.get(self.value, self.value)


class Finding(enum.Enum):
    """The paper's findings, each a claim a study checks; `number` is their order in the report (and the paper's)."""

    MATCHING = (1, "From scratch matches pre-training, given a proper norm and a long enough schedule")
    CONVERGENCE = (2, "Pre-training speeds up convergence, but scratch catches up at a comparable total cost")
    LESS_DATA = (
        3,
        "Pre-training does not automatically regularize: with less data scratch still matches, until very little",
    )
    LOCALIZATION = (4, "Pre-training helps less for localization-sensitive metrics (AP75, mask AP) than for AP50")

    def __init__(self, number: int, claim: str) -> None:
        self.number, self.claim = number, claim

    @property
    def cite(self) -> str:
        return f"finding {self.number}"


MATCH_TOLERANCE = 1.0  # box AP: "scratch matches pre-training" means not more than this behind
ONE_SEED = "one seed"  # a decided interval from one seed holds no training noise: not a verdict
NEEDS_A_PAIR = "needs a finished scratch and a finished pre-trained arm of the same norm"
SIGNAL_FLOOR = 1.0  # AP: below this on every arm compared, a comparison says nothing ("too little signal")
EARLY_FRACTION = 1 / 3  # finding 2's early point: this far from the end of warm-up to the end of the shortest run
COST_TOLERANCE = 0.10  # "a comparable total cost": pixels seen within ±10%


@dataclass(frozen=True)
class Verdict:
    finding: Finding
    status: Status
    evidence: str
    reason: str = ""  # why inconclusive / not tested
    rule: str = ""
    conditions: list[str] = field(default_factory=list)

    init: str = ""  # the pre-trained init it is about, where a study has several

    @property
    def title(self) -> str:
        return f"{self.finding.number}. {self.finding.claim}" + (f" (pre-trained: {self.init})" if self.init else "")

    @property
    def label(self) -> str:
        return (
            f"{self.status}: {self.reason}"
            if self.reason and self.status in (Status.INCONCLUSIVE, Status.UNTESTED)
            else self.status
        )


@dataclass(frozen=True)
class Part:
    """The verdict of one norm (or one training-set size): combined into the finding's verdict."""

    name: str
    status: Status
    reason: str
    evidence: str


def judge(estimate: Estimate, threshold: float, level: float = LEVEL) -> tuple[Status, str]:
    """Holds (fails) when the interval lies wholly above (below) `threshold` and holds training noise."""
    if not estimate.known:
        return Status.INCONCLUSIVE, f"interval unknown ({estimate.note or 'saved evaluations missing'})"
    decided = (
        Status.HOLDS if estimate.above(threshold, level) else Status.FAILS if estimate.below(threshold, level) else None
    )
    if decided is None:
        return Status.INCONCLUSIVE, "within noise"
    return (decided, "") if estimate.training_noise else (Status.INCONCLUSIVE, ONE_SEED)


def judge_all(judged: list[tuple[Status, str]]) -> tuple[Status, str]:
    """Conditions that must all hold: fails when one fails, holds when every one holds, else inconclusive."""
    statuses = [s for s, _ in judged]
    if Status.FAILS in statuses:
        return Status.FAILS, ""
    if all(s == Status.HOLDS for s in statuses):
        return Status.HOLDS, ""
    return Status.INCONCLUSIVE, "; ".join(dict.fromkeys(r for s, r in judged if s == Status.INCONCLUSIVE))


def too_little_signal(*values: float) -> bool:
    return all(math.isnan(v) or v < SIGNAL_FLOOR for v in values)


def seeds_note(estimate: Estimate) -> str:
    return " (one seed: the interval holds no training noise)" if estimate.known and not estimate.training_noise else ""


def unconverged(states: list[Convergence]) -> str:
    return "; ".join(f"{s.text.split(':')[0]}: {s.next_step}" for s in states if not s.converged)


def combine(finding: Finding, parts: list[Part], rule: str, conditions: list[str], untested: str) -> Verdict:
    """One verdict from its parts: holds (fails) when every tested part holds (fails), else inconclusive."""
    if not parts:
        return Verdict(finding, Status.UNTESTED, untested, "no such arms", rule, conditions)
    tested = [p for p in parts if p.status != Status.UNTESTED]
    statuses = {p.status for p in tested}
    # Each part is labelled only where there are several: one part's label is the verdict's own.
    evidence = (
        parts[0].evidence
        if len(parts) == 1
        else " | ".join(f"[{p.status}{': ' + p.reason if p.reason else ''}] {p.evidence}" for p in parts)
    )
    if not tested:
        return Verdict(
            finding, Status.UNTESTED, evidence, "; ".join(sorted({p.reason for p in parts})), rule, conditions
        )
    if len(statuses) == 1:
        status = statuses.pop()
        reasons = sorted({p.reason for p in tested if p.reason})
        return Verdict(finding, status, evidence, "; ".join(reasons), rule, conditions)
    return Verdict(finding, Status.INCONCLUSIVE, evidence, "the parts disagree", rule, conditions)


def conditions_of(evidence: Evidence, arms: list[ArmResult]) -> list[str]:
    """The seeds, the validation images the verdict's estimates rested on, and what the noise leaves out."""
    seeds = sorted({a.seed for a in arms})
    images = ", ".join(str(n) for n in sorted(evidence.used_images - {0}))
    images = images or ("unknown (evaluations not saved)" if evidence.used_images else "none compared")
    found = [f"seeds: {len(seeds)} ({', '.join(map(str, seeds))})", f"validation images: {images}"]
    shared: dict[str, set[int]] = {}
    for arm in arms:
        if arm.init != "scratch":
            shared.setdefault(arm.init_source, set()).add(arm.seed)
    if len(seeds) > 1 and any(len(s) > 1 for s in shared.values()):
        found.append(
            "pre-training: one run shared by every seed, so its own variance is not in the intervals "
            "(pretrain: {per_seed: true} samples it)"
        )
    return found + sorted(evidence.notes)
