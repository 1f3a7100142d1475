"""A study's jobs: the units of work an executor runs, with what each needs first and what it runs on.

A job is a whole run (pretrain/NAME, arms/NAME) or, for a fork parent, the part of its run up to one of its fork
iterations (arms/NAME@ITER). The parts of one run share its run directory; a part is done once the checkpoint at
its end exists, so an arm forked there can start while its parent trains on. Whether a job is done is read from its
run directory alone, whoever ran it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from scratchdet.config import Config
from scratchdet.engine import rundir
from scratchdet.study.resources import JobResources, Resources, resources_for
from scratchdet.study.spec import StudyPlan, config_file


@dataclass
class StudyJob:
    name: str  # pretrain/NAME, arms/NAME, or arms/NAME@ITER (the part of arms/NAME up to ITER)
    run: str  # the run it is (part of): pretrain/NAME or arms/NAME
    command: str  # the `scratchdet` command that trains it: train | pretrain
    run_dir: Path
    config: Config
    config_file: Path  # STUDY_DIR/configs/...: the resolved config, written before anything runs
    iterations: int  # of the whole run
    resources: JobResources
    start: int = 0  # the iteration it starts from: its fork's, or the end of the previous part of its run
    stop_at: int | None = None  # a part's end
    needs: list[str] = field(default_factory=list)  # jobs that must be done first
    fork_from: Path | None = None  # the parent's run directory, for a forked arm
    fork_iteration: int = 0

    @property
    def end(self) -> int:
        return self.stop_at if self.stop_at is not None else self.iterations

    def done(self) -> bool:
        if rundir.is_finished(self.run_dir):
            return True
        return self.stop_at is not None and rundir.checkpoint_file(self.run_dir, self.stop_at).is_file()

    @property
    def fork_part(self) -> str | None:
        """For a forked arm, the job that writes the checkpoint it starts from: its parent's part up to the fork."""
        return None if self.fork_from is None else f"arms/{self.fork_from.name}@{self.fork_iteration}"

    @property
    def started(self) -> bool:
        return rundir.is_run(self.run_dir)

    def progress(self) -> int:
        """The last iteration its run has logged (its end once done)."""
        if rundir.is_finished(self.run_dir):
            return self.iterations
        return rundir.last_logged_iteration(self.run_dir, default=self.fork_iteration)


JobGraph = dict[str, StudyJob]  # by name, in dependency order: a job comes after every job it needs


def job_graph(plan: StudyPlan, study_dir: Path, flags: Resources | None = None) -> JobGraph:
    """The plan's jobs, fork parents split at their fork iterations; `flags` are resource settings from the
    command line (study/resources.py)."""
    flags = flags or Resources()
    runs: list[StudyJob] = []
    for pre in plan.pretrainings:
        name = f"pretrain/{pre.name}"
        resources = resources_for(name, plan.spec.resources, flags, pre.config.pretrain.images_per_batch)
        run_dir = study_dir / "pretrain" / pre.name
        runs.append(_job(name, "pretrain", run_dir, pre.config, pre.iterations, resources, study_dir))
    for arm in plan.arms:
        config = arm.config
        if arm.keep_iterations:
            config = config.model_copy(deep=True)
            config.output.keep_iterations = sorted(set(arm.keep_iterations))
        name = f"arms/{arm.name}"
        resources = resources_for(name, plan.spec.resources, flags, config.solver.images_per_batch)
        job = _job(name, "train", study_dir / "arms" / arm.name, config, arm.iterations, resources, study_dir)
        if arm.pretrain:
            job.needs.append(f"pretrain/{arm.pretrain}")
        if arm.fork_parent:
            job.fork_from, job.fork_iteration = study_dir / "arms" / arm.fork_parent, arm.fork_iteration
            job.start = arm.fork_iteration
            job.needs.append(str(job.fork_part))
        runs.append(job)
    forks: dict[str, set[int]] = {}  # fork parent -> the iterations its parts end at
    for job in runs:
        if job.fork_from is not None:
            forks.setdefault(f"arms/{job.fork_from.name}", set()).add(job.fork_iteration)
    graph: JobGraph = {}
    for job in runs:
        for part in _split(job, sorted(forks.get(job.name, ()))):
            graph[part.name] = part
    return _in_dependency_order(graph)


def _job(
    name: str, command: str, run_dir: Path, config: Config, iterations: int, resources: JobResources, study_dir: Path
) -> StudyJob:
    return StudyJob(name, name, command, run_dir, config, config_file(study_dir, name), iterations, resources)


def _split(job: StudyJob, at: list[int]) -> list[StudyJob]:
    """`job` as parts ending at each of the iterations `at`, then its rest; the first part needs what it needs."""
    parts, needs, start = [], job.needs, job.start
    for iteration in at:
        part = StudyJob(**{**job.__dict__, "name": f"{job.name}@{iteration}", "stop_at": iteration})
        part.needs, part.start = needs, start
        parts.append(part)
        needs, start = [part.name], iteration
    rest = StudyJob(**job.__dict__)
    rest.needs, rest.start = needs, start
    return [*parts, rest]


def _in_dependency_order(jobs: JobGraph) -> JobGraph:
    ordered: JobGraph = {}

    def visit(name: str) -> None:
        if name not in ordered:
            for need in jobs[name].needs:
                visit(need)
            ordered[name] = jobs[name]

    for name in jobs:
        visit(name)
    return ordered


def runs_of(graph: JobGraph) -> dict[str, list[StudyJob]]:
    """The parts of each run, in order (a run not split has one)."""
    runs: dict[str, list[StudyJob]] = {}
    for job in graph.values():
        runs.setdefault(job.run, []).append(job)
    return {run: sorted(parts, key=lambda p: p.start) for run, parts in runs.items()}


class JobStatus(enum.Enum):
    NEW = "new"  # never started, or started and stopped: to be run
    QUEUED = "queued"  # the executor holds it and will run it
    RUNNING = "running"
    FINISHED = "finished"
    UNFINISHED = "unfinished"  # the executor ended it before its end (cancelled, timed out): to be run again
    FAILED = "failed"  # it ended with an error of its own: not run again unless asked
    WAITING = "waiting"  # it needs a job that failed


@dataclass
class JobState:
    """Where one job stands: its `status`, the `label` shown for it (the status, with what the executor knows),
    its executor's id, and whether the next submission should (re)submit it."""

    status: JobStatus
    label: str = ""
    job_id: str = ""
    submit: bool = False

    def __post_init__(self) -> None:
        self.label = self.label or self.status.value

    @property
    def live(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def failed(self) -> bool:
        return self.status is JobStatus.FAILED


def format_states(states: dict[str, JobState], id_header: str = "id") -> str:
    rows = [f"{'job':<48s} {id_header:>9s}  state"]
    rows += [f"{name:<48s} {state.job_id or '-':>9s}  {state.label}" for name, state in states.items()]
    return "\n".join(rows)
