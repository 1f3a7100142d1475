"""The study report: figures (PNG), one self-contained HTML file, and a Markdown summary, from one list of sections.

Built from the run directories alone (`results.read_study`): the verdicts, the tables of final metrics,
pre-training and runs, the figures (study/figures.py) and the gallery (study/gallery.py), rendered by
study/render.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure as PlotFigure

from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write_bytes, atomic_write_text
from scratchdet.study import figures
from scratchdet.study.convergence import schedule_text
from scratchdet.study.findings import all_verdicts
from scratchdet.study.gallery import SCORE_FLOOR, Gallery, build_gallery
from scratchdet.study.intervals import Evidence
from scratchdet.study.render import (
    Block,
    Figure,
    Paragraph,
    Picture,
    PictureTable,
    Section,
    Table,
    Verdicts,
    html_page,
    markdown,
)
from scratchdet.study.results import ArmResult, PretrainResult, grouped, mean_std, read_pretraining, read_study
from scratchdet.study.timeline import Timeline, read_timeline
from scratchdet.study.verdicts import Finding

TABLE_METRICS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"))
INTRO = (
    "Does pre-training pay off on this dataset? Each finding of Rethinking ImageNet Pre-training (He, Girshick, "
    "Dollár) is checked against the runs of this study."
)


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
    f"The same objects' masks ({Finding.LOCALIZATION.cite} is about how well each init localizes): the ground "
    "truth, then each arm's best mask of that category on the object, with its mask IoU; the objects on which the "
    "arms differ most first."
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
            (arm, task, iteration, figures.BAND_RESAMPLES) for iteration, metrics in arm.evaluations for task in metrics
        ]
        if arm.finished and arm.final:
            requests += [(arm, task, None, None) for task in arm.final]
    return requests


FIGURES: list[tuple[str, str, Callable[[list[ArmResult], Evidence], PlotFigure | None]]] = [
    (
        "ap_curves",
        "Box and mask AP during training, per norm; dotted lines mark the end of each schedule (the paper's Figures "
        "1 and 4); shaded: the 95% band over resamples of the validation images; stars: final evaluations on all "
        "validation images, where the periodic ones score fewer.",
        figures.figure_ap_curves,
    ),
    (
        "accounting",
        "Images, instances and pixels seen: pre-training (green) plus detection training, against training from "
        "scratch (the paper's Figure 2).",
        lambda arms, _: figures.figure_accounting(arms),
    ),
    (
        "less_data",
        "Final box AP against the number of training images, at the longest schedule.",
        lambda arms, _: figures.figure_less_data(arms),
    ),
    (
        "pretraining_gain",
        f"What pre-training adds in AP50, AP75 and mask AP at each schedule ({Finding.LOCALIZATION.cite}).",
        lambda arms, _: figures.figure_gain(arms),
    ),
    (
        "overfitting",
        "Training loss and validation box AP over time on the least data: AP falling while the loss falls is "
        "over-fitting.",
        lambda arms, _: figures.figure_overfitting(arms),
    ),
]


def build_report(study_dir: Path) -> Path:
    """Write STUDY_DIR/report/{report.html, report.md, figures/*.png, gallery/*.png}; returns the HTML path."""
    study_dir = Path(study_dir)
    out = study_dir / "report"
    arms = read_study(study_dir)
    evidence = Evidence(arms)
    evidence.prefetch(resampling_requests(arms), workers=os.cpu_count() or 1)
    sections = [
        Section("Verdicts", [Paragraph(INTRO), Paragraph(VERDICT_NOTE), Verdicts(all_verdicts(arms, evidence))]),
        Section("Final metrics", [Paragraph("Mean ± standard deviation over seeds."), Table(metrics_table(arms))]),
    ]
    pretraining = pretraining_table(read_pretraining(study_dir))
    if len(pretraining) > 1:
        sections.append(Section("Pre-training", [Paragraph(PRETRAINING_NOTE), Table(pretraining)]))
    sections.append(Section("Figures", _figures(arms, evidence, out)))
    sections.append(Section("Gallery", _gallery(arms, out)))
    runs: list[Block] = [Table(runs_table(arms))]
    unfinished = [a.name for a in arms if not a.finished]
    if unfinished:
        runs.append(Paragraph(f"Unfinished arms (not in the verdicts): {', '.join(unfinished)}"))
    sections.append(Section("Runs", runs))
    timeline = read_timeline(study_dir)
    if timeline is not None and timeline.runs:
        sections.append(Section("Where the time went", _timeline(timeline, out)))
    title = f"scratchdet study: {study_dir.name}"
    atomic_write_text(out / "report.md", markdown(title, sections))
    atomic_write_text(out / "report.html", html_page(title, sections))
    return out / "report.html"


def _figures(arms: list[ArmResult], evidence: Evidence, out: Path) -> list[Block]:
    blocks: list[Block] = []
    for name, caption, draw in FIGURES:
        figure = draw(arms, evidence) if arms else None
        if figure is not None:
            path = f"figures/{name}.png"
            blocks.append(Figure(Picture(figures.save(figure, out / path), path, name), caption))
    return blocks


def timeline_table(timeline: Timeline) -> list[list[str]]:
    """Rows: each run of the latest submission, by start: how long it waited, then its process's parts (s)."""
    rows = [["run", "waited", "start-up, checkpoints", "training (steps)", "evaluating", "wall", "ended at", "exit"]]
    for run in timeline.runs:
        seconds = [run.started, run.other, run.training, run.evaluating, run.wall, run.ended]
        cells = [f"{value:.1f}" for value in seconds]
        cells[2] += f" ({run.steps})"
        cells[3] += f" ({len(run.evaluations)})"
        rows.append([run.run, *cells, "running or killed" if run.exit_code is None else str(run.exit_code)])
    return rows


def timeline_summary(timeline: Timeline) -> str:
    runs = timeline.runs
    total = sum(r.wall for r in runs) or 1.0
    parts = [(sum(r.training for r in runs), "training"), (sum(r.evaluating for r in runs), "evaluating"),
             (sum(r.other for r in runs), "starting up, writing checkpoints and summaries")]  # fmt: skip
    return (
        f"The latest call trained {len(runs)} run(s), at most {timeline.slots} at once, in {timeline.span:.0f} s from "
        f"its start to the last run's end; the slots were busy {timeline.busy:.0%} of that time (idle: waiting for a "
        "run another needs, or nothing left to start). Of the runs' own time: "
        + ", ".join(f"{seconds / total:.0%} {what}" for seconds, what in parts)
        + ". Seconds after the call began; training: the steps' time (their number in brackets), evaluating: the "
        "evaluations' (their number in brackets), start-up: what a process spent outside its steps and evaluations. "
        "Data generation before the study and this report are not in it."
    )


def _timeline(timeline: Timeline, out: Path) -> list[Block]:
    blocks: list[Block] = [Paragraph(timeline_summary(timeline))]
    figure = figures.figure_timeline(timeline)
    if figure is not None:
        path = "figures/timeline.png"
        caption = "Each run's wait and its process over the call's time."
        blocks.append(Figure(Picture(figures.save(figure, out / path), path, "timeline"), caption))
    return [*blocks, Table(timeline_table(timeline))]


def _gallery(arms: list[ArmResult], out: Path) -> list[Block]:
    """The gallery's tables, their pictures also saved under `out`/gallery (for report.md); an unreadable image
    leaves the gallery out with the reason, never the report."""
    try:
        gallery = build_gallery(arms)
    except ScratchdetError as exc:
        gallery = Gallery(missing=str(exc))
    if gallery.missing:
        return [Paragraph(f"No gallery: {gallery.missing}.")]
    images = [
        (name, [_saved(png, out, f"gallery/image{row}_{column}.png", name) for column, png in enumerate(pictures)])
        for row, (name, pictures) in enumerate(gallery.rows)
    ]
    blocks: list[Block] = [Paragraph(GALLERY_NOTE), PictureTable(["image", *gallery.columns], images)]
    if gallery.crops:
        crops = [
            (
                caption,
                [
                    _saved(png, out, f"gallery/crop{row}_{column}.png", caption, note)
                    for column, (png, note) in enumerate(zip(pictures, notes, strict=True))
                ],
            )
            for row, (caption, pictures, notes) in enumerate(gallery.crops)
        ]
        blocks += [Paragraph(CROPS_NOTE), PictureTable(["object", *gallery.columns], crops)]
    return blocks


def _saved(png: bytes, out: Path, path: str, name: str, note: str = "") -> Picture:
    atomic_write_bytes(out / path, png)
    return Picture(png, path, name, note)
