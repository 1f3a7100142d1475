"""Running a study: plan -> executor -> results -> report.

    STUDY_DIR/study.yaml          the spec, as given
    STUDY_DIR/configs/*.yaml      the resolved config of every run
    STUDY_DIR/pretrain/<name>/    pre-training run directories (backbone.pth)
    STUDY_DIR/arms/<name>/        training run directories
    STUDY_DIR/report/             the report (rebuilt from the run directories alone)

The spec is expanded into runs (study/spec.py), the runs into a graph of jobs (study/jobs.py), which an executor
(study/executor.py: here, or on Slurm) runs: a job whose run directory says it is done is skipped, one started and
stopped resumes, a forked arm starts from a copy of its parent's checkpoint at the fork iteration. The report is
written from the run directories once nothing runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scratchdet.assemble import detector_from_config
from scratchdet.config import SCRATCH_OVERRIDES, Config, load_config, without_init
from scratchdet.engine import rundir
from scratchdet.engine.detection import detection_step_seconds, training_set_size
from scratchdet.engine.hooks import format_duration
from scratchdet.engine.pretrain import pretraining_step_seconds
from scratchdet.errors import ScratchdetError
from scratchdet.storage import LOCK_FILE, atomic_write_text, lock_holder, try_lock
from scratchdet.study.executor import EXECUTORS, Executor
from scratchdet.study.jobs import JobGraph, JobStatus, job_graph, runs_of
from scratchdet.study.local import LocalExecutor
from scratchdet.study.report import build_report
from scratchdet.study.resources import Resources
from scratchdet.study.spec import INITS_FILE, StudyPlan, expand, inits_record, read_spec

log = logging.getLogger(__name__)


def _dataset_size(plan_base: Config) -> int | None:

    try:
        return training_set_size(
            plan_base.model_copy(update={"data": plan_base.data.model_copy(update={"train_subset": None})})
        )
    except ScratchdetError:
        return None


def plan_study(spec_path: Path, study_dir: Path) -> StudyPlan:

    spec = read_spec(spec_path)
    base = load_config(spec.base, [*spec.overrides, *SCRATCH_OVERRIDES])
    return expand(spec, study_dir, _dataset_size(base))


def estimated_seconds(plan: StudyPlan, seconds_per_iteration: float | None = None) -> tuple[dict[str, float], str]:
    """Training seconds of every job (pretrain/NAME, arms/NAME; a forked arm from its fork on) and where the speed
    comes from: `seconds_per_iteration` for every job when given, else a short measured warm-up of each distinct
    model on this machine."""
    speeds: dict[str, float] = {}
    estimates: dict[str, float] = {}
    for job in plan.pretrainings:
        if seconds_per_iteration is None:
            speeds[f"pretraining {job.name}"] = pretraining_step_seconds(job.config)
        estimates[f"pretrain/{job.name}"] = (
            seconds_per_iteration or speeds[f"pretraining {job.name}"]
        ) * job.iterations
    for arm in plan.arms:
        key = str(arm.values["norm"])
        if seconds_per_iteration is None and key not in speeds:
            speeds[key] = detection_step_seconds(without_init(arm.config))
        speed = seconds_per_iteration or speeds[key]
        estimates[f"arms/{arm.name}"] = speed * (arm.iterations - arm.fork_iteration)
    if seconds_per_iteration is not None:
        return estimates, f"given: {seconds_per_iteration:g} s/it"
    return estimates, "measured on this machine: " + ", ".join(f"{k}: {v:.3f} s/it" for k, v in speeds.items())


def describe_plan(plan: StudyPlan, estimates: dict[str, float] | None = None, source: str = "") -> str:
    """The `--dry-run` table: every job, its iterations and images, forks, and the time `estimates` (from
    `estimated_seconds`, which says where they come from: `source`)."""

    estimates = estimates or {}
    rows = [f"{'job':<40s} {'iterations':>10s} {'images':>10s} {'starts at':>10s} {'est. time':>10s}"]

    def time_of(name: str) -> str:
        return format_duration(estimates[name]) if name in estimates else "-"

    for job in plan.pretrainings:
        images = job.iterations * job.config.pretrain.images_per_batch
        name = f"pretrain/{job.name}"
        rows.append(f"{name:<40s} {job.iterations:>10,d} {images:>10,d} {0:>10d} {time_of(name):>10s}")
    for arm in plan.arms:
        images = arm.iterations * arm.config.solver.images_per_batch
        start = f"{arm.fork_iteration}" if arm.fork_parent else "0"
        name = f"arms/{arm.name}"
        rows.append(f"{name:<40s} {arm.iterations:>10,d} {images:>10,d} {start:>10s} {time_of(name):>10s}")
        if arm.fork_parent:
            rows.append(f"{'':<6s}forked from {arm.fork_parent} at its first lr step ({arm.fork_iteration} iterations)")
        if arm.cost:
            rows.append(f"{'':<6s}cost-matched: {arm.cost}")
    total = sum(a.iterations for a in plan.arms)
    rows.append(
        f"forking saves {plan.iterations_saved:,} of {total:,} detection iterations "
        f"({100 * plan.iterations_saved / max(total, 1):.0f}%)"
    )
    if estimates:
        rows.append(
            f"estimated training time: {format_duration(sum(estimates.values()))} ({source}; evaluation and "
            "start-up not included)"
        )
    return "\n".join(rows)


def check_weights(plan: StudyPlan) -> list[str]:
    """Load every weight file a study names into the backbone of each arm that uses it (once per architecture and
    norm), before anything trains; a file that does not fit raises with its load report. Returns the reports."""

    reports, seen = [], set()
    for arm in plan.arms:
        if arm.values["init"] not in plan.spec.weights:
            continue
        model = arm.config.model
        key = (model.init, model.arch, model.backbone, model.norm, model.narrow_width, model.narrow_depth)
        if key in seen:
            continue
        seen.add(key)
        try:
            _, report = detector_from_config(arm.config, 2)
        except ScratchdetError as exc:
            raise ScratchdetError(
                f"init {arm.values['init']} ({model.init}) does not fit arm {arm.name}: {exc}"
            ) from None
        assert report is not None
        reports.append(f"init {arm.values['init']} for {model.arch} {model.backbone} {model.norm}:\n{report.format()}")
    return reports


def run_study(
    spec_path: Path,
    study_dir: Path,
    *,
    executor: Executor | None = None,
    dry_run: bool = False,
    resources: Resources | None = None,
    seconds_per_iteration: float | None = None,
) -> Path | None:
    """Plan the study, let `executor` (default: the local one, one job at a time) run what is missing, and write
    the report; returns the report's path (None for a dry run, or when the jobs go on without this process)."""

    rundir.setup_logging(None)
    study_dir = Path(study_dir)
    chosen: Executor = executor if executor is not None else LocalExecutor()
    plan = plan_study(spec_path, study_dir)
    load_reports = check_weights(plan)
    graph = job_graph(plan, study_dir, resources)
    chosen.check(plan, graph, study_dir)
    if dry_run:
        estimates, source = estimated_seconds(plan, seconds_per_iteration=seconds_per_iteration)
        print(describe_plan(plan, estimates, source))
        print(chosen.describe(graph, study_dir, estimates, source), *load_reports, sep="\n")
        return None
    _check_no_other_executor(chosen, study_dir)
    _check_runs_match_the_plan(graph, study_dir)
    started = time.perf_counter()
    with _holding_study(spec_path, study_dir, plan):
        for job in graph.values():
            atomic_write_text(job.config_file, job.config.to_yaml())
        chosen.submit(graph, study_dir)
    states = chosen.wait(graph, study_dir)
    if states is None:
        return None
    report_started = time.perf_counter()
    report = build_report(study_dir)
    log.info(f"report written in {time.perf_counter() - report_started:.1f} s")
    unfinished = [name for name, state in states.items() if state.status is not JobStatus.FINISHED]
    if unfinished:
        raise ScratchdetError(
            f"the report ({report}) lacks what these jobs did not finish: {', '.join(unfinished)}; {chosen.retry_hint}"
        )
    log.info(f"study finished in {format_duration(time.perf_counter() - started)}; report: {report}")
    return report


def _check_no_other_executor(executor: Executor, study_dir: Path) -> None:
    """One executor at a time: jobs another still holds would train the same run directories."""
    for name, entry in EXECUTORS.items():
        other = entry.load()
        if isinstance(executor, other):
            continue
        live = other.live_jobs(study_dir)
        if live:
            raise ScratchdetError(
                f"{study_dir} has jobs queued or running under --executor {name} ({', '.join(live)}): follow them "
                f"with --executor {name}, or stop them before running the study another way"
            )


# Settings a run's results do not depend on, or that another check covers (the data by its digest, each arm's init
# by the spec): a run may differ from the plan that continues it in these.
FREE_SETTINGS = ("description", "output", "data.root", "data.num_workers", "pretrain.root", "pretrain.num_workers",
                 "model.init", "eval.images_per_batch", "solver.compile")  # fmt: skip


def _check_runs_match_the_plan(graph: JobGraph, study_dir: Path) -> None:
    """Refuse to continue a study whose started runs were trained on other data (regenerated, another size, edited
    annotations) or with other settings (an edited base config) than the plan now gives: finished arms would be
    skipped, started ones resumed, and the report would set results of two experiments side by side as one."""
    changed = []
    for parts in runs_of(graph).values():
        first = parts[0]
        if not rundir.is_run(first.run_dir):
            continue
        changes = rundir.data_changes(first.run_dir, rundir.data_record(first.config, first.command))
        try:
            changes += rundir.read_config(first.run_dir).differences(first.config, FREE_SETTINGS)
        except ScratchdetError as exc:  # a config this version no longer reads: not comparable, not continuable
            changes.append(f"its config no longer loads ({exc})")
        changed += [f"{first.run}: {change}" for change in changes]
    if changed:
        listed = "\n  ".join(changed[:12]) + (f"\n  ... and {len(changed) - 12} more" if len(changed) > 12 else "")
        raise ScratchdetError(
            f"{study_dir}: runs of this study were trained on other data or settings than it plans now (run: what "
            f"changed, then -> now):\n  {listed}\nContinuing would mix two experiments in one report: run the study "
            "with another --out (or restore what changed)"
        )


@contextmanager
def _holding_study(spec_path: Path, study_dir: Path, plan: StudyPlan) -> Iterator[None]:
    """The study directory for this spec alone, locked against a second `scratchdet study` while it runs or
    submits; the spec and the inits are saved in it."""
    spec_text = Path(spec_path).read_text()
    saved = study_dir / "study.yaml"
    if saved.is_file() and saved.read_text() != spec_text:
        raise ScratchdetError(f"{study_dir} holds a study with another spec ({saved}); use another --out")
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = try_lock(study_dir / LOCK_FILE)
    if lock is None:
        raise ScratchdetError(
            f"{study_dir} is in use by {lock_holder(study_dir / LOCK_FILE)} running the same study; wait for it to "
            f"end or stop it, then run the study again to continue"
        )
    try:
        atomic_write_text(saved, spec_text)
        atomic_write_text(study_dir / INITS_FILE, json.dumps(inits_record(plan.spec), indent=2) + "\n")
        yield
    finally:
        os.close(lock)
