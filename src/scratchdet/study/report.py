"""The study report: figures (PNG), one self-contained HTML file, and a Markdown summary.

Built from the run directories alone (`results.read_study`). Every user-provided string (arm names, category
names, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from scratchdet.errors import ScratchdetError
from scratchdet.io import atomic_write_bytes, atomic_write_text
from scratchdet.study.gallery import SCORE_FLOOR, Gallery, build_gallery
from scratchdet.study.results import (
    ArmResult,
    PretrainResult,
    full_data_subset,
    grouped,
    mean_std,
    read_pretraining,
    read_study,
)
from scratchdet.study.statistics import Z_975, Evidence
from scratchdet.study.verdicts import FAILS, HOLDS, INCONCLUSIVE, Verdict, all_verdicts, schedule_text

COLOURS = {"scratch": "tab:blue", "pretrained": "tab:orange"}
STYLES = ["-", "--", ":", "-."]
BAND_RESAMPLES = 100  # a curve's band is a picture of the noise: 100 of the verdicts' resamples draw it
TABLE_METRICS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"))


def _save(figure: Figure, path: Path) -> bytes:
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
    """Gain of pre-training (pre-trained − scratch) in AP50, AP75 and mask AP at each schedule (finding 4)."""
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


def metrics_table(arms: list[ArmResult]) -> list[list[str]]:
    """Rows: arm group (seeds merged), seeds, then mean ± std of each final metric."""
    rows = [
        [
            "init",
            "norm",
            "schedule",
            "train images",
            "seeds",
            *(f"{'mask' if t == 'segm' else 'box'} {n}" for t, n in TABLE_METRICS),
        ]
    ]
    for (init, norm, multiplier, _), members in sorted(grouped(arms).items(), key=lambda kv: str(kv[0])):
        done = [a for a in members if a.finished]
        cells = []
        for task, name in TABLE_METRICS:
            value, spread = mean_std([a.metric(task, name) for a in done])
            cells.append("n/a" if math.isnan(value) else f"{value:.1f}" + (f" ± {spread:.1f}" if len(done) > 1 else ""))
        images = max((a.train_images for a in members), default=0)
        rows.append([init, norm, schedule_text(multiplier), str(images or "-"), str(len(done)), *cells])
    return rows


def pretraining_table(runs: list[PretrainResult]) -> list[list[str]]:
    """Rows: every pre-training run, its state, iterations, images seen and validation accuracy."""
    rows = [["run", "state", "iterations", "images seen", "val top-1 %", "val top-5 %"]]
    for run in runs:
        finished = not math.isnan(run.top1)
        accuracy = [f"{run.top1:.1f}", f"{run.top5:.1f}"] if finished else ["-", "-"]
        rows.append(
            [
                f"pretrain/{run.name}",
                "finished" if finished else "unfinished",
                str(run.iterations),
                f"{run.images:,}",
                *accuracy,
            ]
        )
    return rows


def runs_table(arms: list[ArmResult]) -> list[list[str]]:
    """Rows: every run directory, its state and final box/mask AP."""
    rows = [["run", "state", "iterations", "box AP", "mask AP"]]
    for arm in arms:
        state = "finished" if arm.finished else "unfinished"
        values = [f"{arm.metric(t, 'AP'):.1f}" if arm.finished else "-" for t in ("bbox", "segm")]
        rows.append([f"arms/{arm.name}", state, str(arm.total_iterations or "-"), *values])
    return rows


# ------------------------------------------------------------------------------------------------ output


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def _verdict_class(verdict: Verdict) -> str:
    return {HOLDS: "holds", FAILS: "fails", INCONCLUSIVE: "inconclusive"}.get(verdict.status, "untested")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.holds{color:#176117;font-weight:bold}.fails{color:#a31515;font-weight:bold}.untested{color:#777}
.inconclusive{color:#8a5a00;font-weight:bold}.rule,.conditions{color:#555;font-size:.9em;margin:.2em 0}
li{margin-bottom:.8em}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}
table.gallery td,table.gallery th{text-align:center;vertical-align:top;font-size:.85em}
table.gallery img{image-rendering:pixelated}"""


VERDICT_NOTE = (
    "Numbers in brackets are 95% intervals with two parts: the spread between seeds (Student's t, with two or more "
    "seeds) and the validation set (500 seeded bootstrap resamples of its images, so the report is reproducible), "
    "each effect counted once, the parts' intervals added in quadrature. A verdict holds or fails only when its "
    "interval lies wholly on one side of its threshold, it holds training noise (two seeds or more) and, for "
    "trained-to-the-end comparisons, the inits have converged; otherwise it is inconclusive and says why."
)

GALLERY_NOTE = (
    "What each init detects on the same validation images: the ground truth, then one arm per init at its longest "
    "schedule (lowest seed), each with its most confident detections, as many as the image has objects (scoring "
    f"{SCORE_FLOOR:g} or more; inits are not calibrated alike, so no one threshold suits both), drawn from the arms' "
    "saved detections. The first rows are the images where the arms find most different numbers of objects; the rest "
    "are a seeded random choice."
)
CROPS_NOTE = (
    "The same objects' masks (finding 4 is about how well each init localizes): the ground truth, then each arm's "
    "best mask of that category on the object, with its mask IoU; the objects on which the arms differ most first."
)
PRETRAINING_NOTE = (
    "The backbone the pre-trained arms start from, trained as a classifier. Its accuracy says how "
    "much the pre-training learned, not whether it learned what the detection categories need."
)


def resampling_requests(arms: list[ArmResult]) -> list[tuple[ArmResult, str, int | None, int | None]]:
    """What the report resamples: every evaluation on a curve (for its band) and every final one (for the
    verdicts' intervals, at the full count)."""
    requests: list[tuple[ArmResult, str, int | None, int | None]] = []
    for arm in arms:
        requests += [
            (arm, task, iteration, BAND_RESAMPLES) for iteration, metrics in arm.evaluations for task in metrics
        ]
        if arm.finished and arm.final:
            requests += [(arm, task, None, None) for task in arm.final]
    return requests


def build_report(study_dir: Path) -> Path:
    """Write STUDY_DIR/report/{report.html, report.md, figures/*.png}; returns the HTML path."""
    study_dir = Path(study_dir)
    out = study_dir / "report"
    arms = read_study(study_dir)
    evidence = Evidence(arms)
    evidence.prefetch(resampling_requests(arms), workers=os.cpu_count() or 1)
    verdicts = all_verdicts(arms, evidence)
    builders = [
        (
            "ap_curves",
            "Box and mask AP during training, per norm; dotted lines mark the end of each schedule "
            "(the paper's Figures 1 and 4); shaded: the 95% band over resamples of the validation images; stars: "
            "final evaluations on all validation images, where the periodic ones score fewer.",
            lambda a: figure_ap_curves(a, evidence),
        ),
        (
            "accounting",
            "Images, instances and pixels seen: pre-training (green) plus detection training, against "
            "training from scratch (the paper's Figure 2).",
            figure_accounting,
        ),
        ("less_data", "Final box AP against the number of training images, at the longest schedule.", figure_less_data),
        (
            "pretraining_gain",
            "What pre-training adds in AP50, AP75 and mask AP at each schedule (finding 4).",
            figure_gain,
        ),
        (
            "overfitting",
            "Training loss and validation box AP over time on the least data: AP falling while the "
            "loss falls is over-fitting.",
            figure_overfitting,
        ),
    ]
    figures: list[tuple[str, str, bytes]] = []
    for name, caption, builder in builders:
        figure = builder(arms) if arms else None
        if figure is not None:
            figures.append((name, caption, _save(figure, out / "figures" / f"{name}.png")))
    tables = {
        "final": metrics_table(arms),
        "pretraining": pretraining_table(read_pretraining(study_dir)),
        "runs": runs_table(arms),
    }
    unfinished = [a.name for a in arms if not a.finished]
    contents = Contents(study_dir, verdicts, figures, tables, unfinished, _gallery(arms, out / "gallery"))
    atomic_write_text(out / "report.md", _markdown(contents))
    atomic_write_text(out / "report.html", _html(contents))
    return out / "report.html"


@dataclass(frozen=True)
class Contents:
    """What report.md and report.html both show."""

    study_dir: Path
    verdicts: list[Verdict]
    figures: list[tuple[str, str, bytes]]  # name, caption, PNG
    tables: dict[str, list[list[str]]]
    unfinished: list[str]
    gallery: Gallery


def _gallery(arms: list[ArmResult], folder: Path) -> Gallery:
    """The gallery, its pictures also saved in `folder` (for report.md); an unreadable image leaves it out with the
    reason, never the report."""
    try:
        gallery = build_gallery(arms)
    except ScratchdetError as exc:
        return Gallery(missing=str(exc))
    for row, (_, pictures) in enumerate(gallery.rows):
        for column, data in enumerate(pictures):
            atomic_write_bytes(folder / f"image{row}_{column}.png", data)
    for row, (_, pictures, _) in enumerate(gallery.crops):
        for column, data in enumerate(pictures):
            atomic_write_bytes(folder / f"crop{row}_{column}.png", data)
    return gallery


def _gallery_md(gallery: Gallery) -> str:
    lines = ["", "## Gallery", ""]
    if gallery.missing:
        return "\n".join([*lines, f"No gallery: {gallery.missing}.", ""])
    lines += [
        GALLERY_NOTE,
        "",
        "| image | " + " | ".join(gallery.columns) + " |",
        "|---" * (len(gallery.columns) + 1) + "|",
    ]
    for row, (name, pictures) in enumerate(gallery.rows):
        cells = [f"![](gallery/image{row}_{column}.png)" for column in range(len(pictures))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if gallery.crops:
        lines += [
            "",
            CROPS_NOTE,
            "",
            "| object | " + " | ".join(gallery.columns) + " |",
            "|---" * (len(gallery.columns) + 1) + "|",
        ]
        for row, (caption, _, notes) in enumerate(gallery.crops):
            cells = [f"![](gallery/crop{row}_{c}.png) {note}" for c, note in enumerate(notes)]
            lines.append(f"| {caption} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def _gallery_html(gallery: Gallery) -> str:
    if gallery.missing:
        return f"<h2>Gallery</h2><p>No gallery: {html.escape(gallery.missing)}.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in gallery.columns)
    parts = [f"<h2>Gallery</h2><p>{html.escape(GALLERY_NOTE)}</p><table class='gallery'><tr><th>image</th>{head}</tr>"]
    for name, pictures in gallery.rows:
        cells = "".join(f"<td>{_img(data, name)}</td>" for data in pictures)
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table>")
    if gallery.crops:
        parts.append(f"<p>{html.escape(CROPS_NOTE)}</p><table class='gallery'><tr><th>object</th>{head}</tr>")
        for caption, pictures, notes in gallery.crops:
            cells = "".join(
                f"<td>{_img(data, caption)}<br>{html.escape(note)}</td>"
                for data, note in zip(pictures, notes, strict=True)
            )
            parts.append(f"<tr><td>{html.escape(caption)}</td>{cells}</tr>")
        parts.append("</table>")
    return "".join(parts)


def _img(data: bytes, alt: str) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}' alt='{html.escape(alt)}'>"


def _markdown(report: Contents) -> str:
    lines = [f"# scratchdet study: {report.study_dir.name}", "", "## Verdicts", ""]
    lines += [VERDICT_NOTE, ""]
    for verdict in report.verdicts:
        lines += [
            f"**{verdict.finding}** — *{verdict.label}*. {verdict.evidence}",
            "",
            f"Rule: {verdict.rule}.",
            "",
            f"Conditions: {'; '.join(verdict.conditions)}.",
            "",
        ]
    lines += ["## Final metrics (mean ± std over seeds)", "", _markdown_table(report.tables["final"]), ""]
    if len(report.tables["pretraining"]) > 1:
        lines += ["## Pre-training", "", PRETRAINING_NOTE, "", _markdown_table(report.tables["pretraining"]), ""]
    lines += ["## Runs", "", _markdown_table(report.tables["runs"]), ""]
    if report.unfinished:
        lines += [f"Unfinished arms (not in the verdicts): {', '.join(report.unfinished)}", ""]
    lines += ["## Figures", ""]
    for name, caption, _ in report.figures:
        lines += [f"![{name}](figures/{name}.png)", "", caption, ""]
    return "\n".join(lines) + _gallery_md(report.gallery)


def _html(report: Contents) -> str:
    title = html.escape(f"scratchdet study: {report.study_dir.name}")
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{CSS}</style></head><body><h1>{title}</h1>",
        "<p>Does pre-training pay off on this dataset? Each finding of <em>Rethinking ImageNet Pre-training</em> "
        "(He, Girshick, Dollár) is checked against the runs of this study.</p><h2>Verdicts</h2>",
        f"<p>{html.escape(VERDICT_NOTE)}</p><ul>",
    ]
    for verdict in report.verdicts:
        parts.append(
            f"<li><strong>{html.escape(verdict.finding)}</strong>: <span class='{_verdict_class(verdict)}'>"
            f"{html.escape(verdict.label)}</span>. {html.escape(verdict.evidence)}"
            f"<p class='rule'>Rule: {html.escape(verdict.rule)}.</p>"
            f"<p class='conditions'>Conditions: {html.escape('; '.join(verdict.conditions))}.</p></li>"
        )
    parts.append(
        "</ul><h2>Final metrics</h2><p>Mean ± standard deviation over seeds.</p>" + _html_table(report.tables["final"])
    )
    if len(report.tables["pretraining"]) > 1:
        parts.append(
            f"<h2>Pre-training</h2><p>{html.escape(PRETRAINING_NOTE)}</p>" + _html_table(report.tables["pretraining"])
        )
    if report.unfinished:
        parts.append(f"<p>Unfinished arms (not in the verdicts): {html.escape(', '.join(report.unfinished))}</p>")
    parts.append("<h2>Figures</h2>")
    for name, caption, data in report.figures:
        parts.append(f"<figure>{_img(data, name)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(_gallery_html(report.gallery))
    parts.append("<h2>Runs</h2>" + _html_table(report.tables["runs"]) + "</body></html>")
    return "\n".join(parts)
