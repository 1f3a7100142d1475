"""The report's figures: AP curves with their bands, what each init has seen, less data, the gain of pre-training
per metric, over-fitting. Each builder takes the study's arms and returns a matplotlib figure (or None when the
study has nothing to draw); `save` writes it as PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from scratchdet.storage import atomic_write_bytes
from scratchdet.study.convergence import schedule_text
from scratchdet.study.intervals import Z_975, Evidence
from scratchdet.study.results import ArmResult, full_data_subset, grouped, mean_std
from scratchdet.study.timeline import Timeline

COLOURS = {"scratch": "tab:blue", "pretrained": "tab:orange"}
STYLES = ["-", "--", ":", "-."]
BAND_RESAMPLES = 100  # a curve's band is a picture of the noise: 100 of the verdicts' resamples draw it
TABLE_METRICS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"))


def save(figure: Figure, path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path.with_suffix(".tmp.png"), dpi=110)
    plt.close(figure)
    data = path.with_suffix(".tmp.png").read_bytes()
    path.with_suffix(".tmp.png").unlink()
    atomic_write_bytes(path, data)
    return data


def figure_ap_curves(arms: list[ArmResult], evidence: Evidence | None = None) -> Figure:
    """Box and mask AP against iterations, one column per norm; dotted lines mark schedule ends (Figures 1, 4).

    With `evidence`, each curve carries its 95% band over validation-image resamples (where evaluations were saved).
    """
    full = full_data_subset(arms)
    shown = [a for a in arms if a.train_subset == full]
    norms = sorted({a.norm for a in shown}) or ["-"]
    multipliers = sorted({a.multiplier for a in shown})
    figure, axes = plt.subplots(2, len(norms), figsize=(7.5 * len(norms), 7), squeeze=False)
    for column, norm in enumerate(norms):
        for row, (task, label) in enumerate((("bbox", "box AP"), ("segm", "mask AP"))):
            axis = axes[row][column]
            for arm in [a for a in shown if a.norm == norm]:
                periodic, final = _split_final(arm, arm.curve(task))
                if periodic:
                    axis.plot(
                        *zip(*periodic, strict=True),
                        STYLES[multipliers.index(arm.multiplier) % 4],
                        marker="o",
                        markersize=3,
                        color=COLOURS[arm.init],
                        label=arm.name,
                    )
                    if evidence is not None:
                        _band(axis, evidence, arm, task, periodic)
                if final:
                    axis.plot(*zip(*final, strict=True), "*", markersize=9, color=COLOURS[arm.init])
                if arm.total_iterations:
                    axis.axvline(arm.total_iterations, color="grey", linestyle=":", linewidth=0.8)
            axis.set_title(f"{label}, norm {norm}")
            axis.set_xlabel("iteration")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if row == 0 and axis.get_legend_handles_labels()[0]:  # one legend per norm, beside the curves' ends
                axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return figure


def _split_final(
    arm: ArmResult, curve: list[tuple[int, float]]
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(periodic points, final point) where the final evaluation scored more images than the periodic ones: joined
    in one line, the last segment would show the change of image set as if it were the model's."""
    if arm.final_on_more_images and arm.finished and curve and curve[-1][0] == arm.total_iterations:
        return curve[:-1], curve[-1:]
    return curve, []


def _band(axis: plt.Axes, evidence: Evidence, arm: ArmResult, task: str, curve: list[tuple[int, float]]) -> None:
    """Shade value ± 1.96 bootstrap standard errors at every evaluation whose detections were saved."""
    points = []
    for iteration, value in curve:
        samples = evidence.samples(arm, task, "AP", iteration, resamples=BAND_RESAMPLES)
        if samples is not None:
            spread = Z_975 * float(samples.std(ddof=1))
            points.append((iteration, value - spread, value + spread))
    if len(points) > 1:
        xs, lows, highs = zip(*points, strict=True)
        axis.fill_between(xs, lows, highs, color=COLOURS[arm.init], alpha=0.12, linewidth=0)


def figure_accounting(arms: list[ArmResult]) -> Figure:
    """Images, instances and pixels seen: pre-training + fine-tuning against from scratch (Figure 2)."""
    full = full_data_subset(arms)
    shown = sorted([a for a in arms if a.train_subset == full and a.finished], key=lambda a: (a.init, a.multiplier))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, kind in zip(axes, ("images", "instances", "pixels"), strict=True):
        names = [a.name + ("" if a.pretrain_cost_known else " (pre-training cost unknown)") for a in shown]
        fine = [a.counts.get(kind, 0) for a in shown]
        pre = [(a.pretrain_counts or {}).get(kind, 0) for a in shown]
        axis.barh(names, pre, color="tab:green", label="pre-training")
        axis.barh(names, fine, left=pre, color=[COLOURS[a.init] for a in shown], label="detection training")
        axis.set_title(f"{kind} seen")
        axis.set_xlabel(kind)
        axis.tick_params(axis="y", labelsize=7)
        axis.legend(fontsize=7)
    return figure


def figure_less_data(arms: list[ArmResult]) -> Figure | None:
    """Final box AP against training-set size at the longest schedule (the less-data figure)."""
    sized = [a for a in arms if a.finished and a.train_images]
    if len({a.train_images for a in sized}) < 2:
        return None
    longest = max(a.multiplier for a in sized)
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for init in ("scratch", "pretrained"):
        points: dict[int, list[float]] = {}
        for arm in sized:
            if arm.init == init and arm.multiplier == longest:
                points.setdefault(arm.train_images, []).append(arm.metric("bbox", "AP"))
        if points:
            sizes = sorted(points)
            axis.plot(sizes, [mean_std(points[s])[0] for s in sizes], "o-", color=COLOURS[init], label=init)
    axis.set_xscale("log")
    axis.set_xlabel("training images")
    axis.set_ylabel(f"final box AP ({schedule_text(longest)})")
    axis.set_title("less data")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def figure_gain(arms: list[ArmResult]) -> Figure:
    """Gain of pre-training (pre-trained − scratch) in AP50, AP75 and mask AP at each schedule (the localization
    finding)."""
    full = full_data_subset(arms)
    groups = grouped([a for a in arms if a.train_subset == full and a.finished])
    keys = sorted({(name, norm, m) for (name, norm, m, _) in groups if name != "scratch"})
    several = len({name for name, _, _ in keys}) > 1
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4.2))
    metrics = (("bbox", "AP50", "box AP50"), ("bbox", "AP75", "box AP75"), ("segm", "AP", "mask AP"))
    width = 0.8 / len(metrics)
    for index, (task, name, label) in enumerate(metrics):
        gains = []
        for init, norm, multiplier in keys:
            pre = mean_std([a.metric(task, name) for a in groups.get((init, norm, multiplier, full), [])])[0]
            scratch = mean_std([a.metric(task, name) for a in groups.get(("scratch", norm, multiplier, full), [])])[0]
            gains.append(pre - scratch)
        axis.bar(
            [k + index * width for k in range(len(keys))],
            [0 if math.isnan(g) else g for g in gains],
            width,
            label=label,
        )
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(
        [k + width for k in range(len(keys))],
        [f"{i + ' ' if several else ''}{n} {schedule_text(m)}" for i, n, m in keys],
    )
    axis.set_ylabel("pre-trained minus scratch (AP points)")
    axis.set_title("what pre-training buys, per metric")
    axis.legend()
    return figure


def figure_overfitting(arms: list[ArmResult]) -> Figure:
    """Training loss and validation box AP over time, for the arms on the least data (over-fitting shows as AP
    falling while the loss keeps falling)."""
    smallest = min((a.train_images for a in arms if a.train_images), default=0)
    shown = [a for a in arms if a.train_images == smallest] or arms
    longest = max((a.multiplier for a in shown), default=0)
    shown = [a for a in shown if a.multiplier == longest][:4]
    figure, axes = plt.subplots(1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 3.8), squeeze=False)
    for axis, arm in zip(axes[0], shown, strict=False):
        if arm.losses:
            axis.plot(*zip(*arm.losses, strict=True), color="grey", linewidth=0.8, label="training loss")
        axis.set_xlabel("iteration")
        axis.set_ylabel("training loss")
        other = axis.twinx()
        if arm.curve("bbox"):
            other.plot(*zip(*arm.curve("bbox"), strict=True), "o-", color=COLOURS[arm.init], label="val box AP")
        other.set_ylabel("val box AP")
        axis.set_title(f"{arm.name} ({arm.train_images} images)", fontsize=9)
    return figure


TIMELINE_COLOURS = {"waiting": "whitesmoke", "other": "darkgrey", "training": "tab:green", "evaluating": "tab:red"}


def figure_timeline(timeline: Timeline) -> Figure | None:
    """One bar per run of the latest submission: waiting, then its process (start-up and the rest in grey, steps
    in green, evaluations in red), against seconds since the submission began."""
    if not timeline.runs:
        return None
    figure, axis = plt.subplots(figsize=(10, 1.2 + 0.32 * len(timeline.runs)))
    for row, run in enumerate(timeline.runs):
        y = len(timeline.runs) - 1 - row  # the first to start at the top

        def bar(start: float, stop: float, part: str, y: int = y) -> None:
            axis.barh(y, stop - start, left=start, color=TIMELINE_COLOURS[part], edgecolor="none", height=0.7)

        bar(0.0, run.started, "waiting")
        bar(run.started, run.ended, "other")
        if run.training_span is not None:
            bar(*run.training_span, "training")
        for start, stop in run.evaluations:
            bar(start, stop, "evaluating")
    axis.set_yticks(range(len(timeline.runs)), [r.run for r in reversed(timeline.runs)], fontsize=7)
    axis.set_xlabel("seconds since the study's runs were submitted")
    axis.set_title(f"where the time went ({timeline.slots} at once; the slots were busy {timeline.busy:.0%} of it)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, ec="grey", lw=0.3) for c in TIMELINE_COLOURS.values()]
    labels = ["waiting", "start-up, checkpoints", "training", "evaluating"]
    axis.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axis.grid(axis="x", alpha=0.3)
    return figure
