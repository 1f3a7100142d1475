"""Running a study: pre-training jobs and arms as `scratchdet` processes, skipping what is done.

    STUDY_DIR/study.yaml          the spec, as given
    STUDY_DIR/configs/*.yaml      the resolved config of every job
    STUDY_DIR/pretrain/<name>/    pre-training run directories (backbone.pth)
    STUDY_DIR/arms/<name>/        training run directories
    STUDY_DIR/report/             the report (rebuilt from the run directories alone)

A job whose run directory has `summary.json` is done and skipped; one with a `config.yaml` but no summary was
interrupted and is resumed; a forked arm starts from a copy of its parent's checkpoint at the fork iteration.
Each job is a separate process whose output goes to `console.txt` in its run directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from scratchdet.assemble import detector_from_config
from scratchdet.config import SCRATCH_OVERRIDES, Config, load_config, without_init
from scratchdet.engine import rundir
from scratchdet.engine.hooks import format_duration
from scratchdet.engine.mps import CONTROL, mps_server
from scratchdet.engine.pretrain import pretraining_step_seconds
from scratchdet.engine.run import detection_step_seconds, training_set_size
from scratchdet.errors import ScratchdetError
from scratchdet.io import LOCK_FILE, atomic_write_text, lock_holder, try_lock
from scratchdet.study.report import build_report
from scratchdet.study.resources import JobResources, Resources, SlurmSettings, resources_for
from scratchdet.study.slurm import (
    JobState,
    SlurmJob,
    format_states,
    slurm_jobs,
    slurm_jobs_alive,
    slurm_plan,
    submit_missing,
    wait_for,
)
from scratchdet.study.spec import INITS_FILE, StudyPlan, config_file, expand, inits_record, read_spec

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
PLAIN_PROGRESS_SECONDS = 30.0


ONE_PROCESS = JobResources(processes=1, nodes=1, gpus=0, cpus=None)


@dataclass
class Job:
    name: str
    command: str  # "pretrain" or "train"
    run_dir: Path
    config: Config
    iterations: int
    needs: list[str] = field(default_factory=list)  # jobs that must finish first
    fork_from: Path | None = None  # parent run directory
    fork_iteration: int = 0
    resources: JobResources = ONE_PROCESS
    process: subprocess.Popen[bytes] | None = None
    failed: bool = False

    @property
    def done(self) -> bool:
        return rundir.is_finished(self.run_dir)

    def progress(self) -> int:
        if self.done:
            return self.iterations
        return rundir.last_logged_iteration(self.run_dir, default=self.fork_iteration)

    def ready(self, jobs: dict[str, Job]) -> bool:
        if any(not jobs[n].done for n in self.needs):
            return False
        return self.fork_from is None or self._fork_checkpoint().is_file() or self.started

    @property
    def started(self) -> bool:
        return rundir.is_run(self.run_dir)

    def _fork_checkpoint(self) -> Path:
        assert self.fork_from is not None
        return rundir.checkpoint_file(self.fork_from, self.fork_iteration)


def jobs_of(plan: StudyPlan, study_dir: Path, flags: Resources | None = None) -> dict[str, Job]:
    """The study's jobs; `flags` are resource settings from the command line (study/resources.py)."""
    flags = flags or Resources()
    jobs: dict[str, Job] = {}
    for pre in plan.pretrain_jobs:
        name = f"pretrain/{pre.name}"
        resources = resources_for(name, plan.spec.resources, flags, pre.config.pretrain.images_per_batch)
        run_dir = study_dir / "pretrain" / pre.name
        jobs[name] = Job(name, "pretrain", run_dir, pre.config, pre.iterations, resources=resources)
    for arm in plan.arms:
        config = arm.config
        if arm.keep_iterations:
            config = config.model_copy(deep=True)
            config.output.keep_iterations = sorted(set(arm.keep_iterations))
        name = f"arms/{arm.name}"
        resources = resources_for(name, plan.spec.resources, flags, config.solver.images_per_batch)
        job = Job(name, "train", study_dir / "arms" / arm.name, config, arm.iterations, resources=resources)
        if arm.pretrain:
            job.needs.append(f"pretrain/{arm.pretrain}")
        if arm.fork_parent:
            job.fork_from, job.fork_iteration = study_dir / "arms" / arm.fork_parent, arm.fork_iteration
        jobs[job.name] = job
    return jobs


def _prepare_fork(job: Job) -> None:
    assert job.fork_from is not None
    rundir.fork(job.fork_from, job.run_dir, job.fork_iteration, job.config)


def write_configs(jobs: dict[str, Job], study_dir: Path) -> None:
    for job in jobs.values():
        atomic_write_text(config_file(study_dir, job.name), job.config.to_yaml())


def _start(job: Job, study_dir: Path, threads: int | None, environment: dict[str, str]) -> None:
    if job.fork_from is not None and not job.started:
        _prepare_fork(job)
    start = [str(config_file(study_dir, job.name)), "--out", str(job.run_dir)]
    arguments = ["--resume", str(job.run_dir)] if job.started else start
    if job.resources.processes > 1:
        arguments += ["--nproc", str(job.resources.processes)]
    job.run_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **environment}
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    console = open(job.run_dir / "console.txt", "ab")  # noqa: SIM115 (closed when the process ends)
    job.process = subprocess.Popen(
        [sys.executable, "-m", "scratchdet", job.command, *arguments],
        stdout=console,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=environment,
        preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
    )
    console.close()  # the child has its own handle
    log.info(f"started {job.name}" + (" (resumed)" if "--resume" in arguments else ""))


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For the child, before it runs: ask Linux to SIGKILL it when the study process dies, however that dies.

    Without it, a study killed by SIGKILL (an OOM killer, `kill -9`, a scheduler) would leave its arms training
    unseen; its rerun would then find their run directories locked. Elsewhere those locks are the only guard.
    """

    def set_parent_death_signal() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the study died before the request took effect
            os._exit(1)

    return set_parent_death_signal


def _console_tail(job: Job, lines: int = 8) -> str:
    try:
        text = (job.run_dir / "console.txt").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n    ".join(text[-lines:])


class _Progress:
    """A bar over all iterations on a terminal; a status line every 30 s otherwise."""

    def __init__(self, jobs: dict[str, Job]) -> None:
        self.jobs = jobs
        self.total = sum(j.iterations - j.fork_iteration for j in jobs.values())
        self.bar = tqdm(total=self.total, desc="study", unit="it") if sys.stderr.isatty() else None
        self.last_line = 0.0

    def update(self) -> None:
        done = sum(max(0, j.progress() - j.fork_iteration) for j in self.jobs.values())
        if self.bar is not None:
            self.bar.n = min(done, self.total)
            running = [j.name.split("/")[-1] for j in self.jobs.values() if j.process and j.process.poll() is None]
            self.bar.set_postfix_str(", ".join(running)[:60])
            self.bar.refresh()
        elif time.monotonic() - self.last_line > PLAIN_PROGRESS_SECONDS:
            self.last_line = time.monotonic()
            finished = sum(j.done for j in self.jobs.values())
            log.info(f"study: {done}/{self.total} iterations, {finished}/{len(self.jobs)} jobs done")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_jobs(
    jobs: dict[str, Job], study_dir: Path, parallel: int = 1, environment: dict[str, str] | None = None
) -> list[Job]:
    """Run every job not yet done, at most `parallel` at a time (with `environment` added to theirs); returns the
    jobs that failed."""
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    progress = _Progress(jobs)
    pending = [j for j in jobs.values() if not j.done]
    for job in jobs.values():
        if job.done:
            log.info(f"{job.name}: already finished, skipped")
    running: list[Job] = []
    try:
        while pending or running:
            for job in [j for j in running if j.process is not None and j.process.poll() is not None]:
                running.remove(job)
                if (job.process is not None and job.process.returncode != 0) or not job.done:
                    job.failed = True
                    log.error(
                        f"{job.name} failed (exit {job.process and job.process.returncode}):\n    {_console_tail(job)}"
                    )
            for job in list(pending):
                if any(jobs[n].failed for n in job.needs) or (job.fork_from and _parent(jobs, job).failed):
                    job.failed = True
                    pending.remove(job)
                    log.error(f"{job.name} skipped: a job it needs failed")
                elif len(running) < parallel and job.ready(jobs):
                    _start(job, study_dir, threads, environment or {})
                    pending.remove(job)
                    running.append(job)
            if not running and pending and not any(j.ready(jobs) for j in pending):
                raise ScratchdetError(f"study stuck: {[j.name for j in pending]} wait for jobs that cannot finish")
            progress.update()
            time.sleep(POLL_SECONDS)
    finally:
        for job in running:  # interrupted: stop the children; their checkpoints let the study resume
            if job.process is not None and job.process.poll() is None:
                job.process.terminate()
        progress.close()
    return [j for j in jobs.values() if j.failed]


def _parent(jobs: dict[str, Job], job: Job) -> Job:
    assert job.fork_from is not None
    return jobs[f"arms/{job.fork_from.name}"]


# --------------------------------------------------------------------------------------------- studies


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
    for job in plan.pretrain_jobs:
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

    for job in plan.pretrain_jobs:
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


@contextmanager
def _gpu_sharing(parallel: int) -> Iterator[dict[str, str]]:
    """The environment for `parallel` jobs on this machine's GPU: clients of an MPS server (engine/mps.py)."""
    import torch

    if parallel <= 1 or not torch.cuda.is_available():
        yield {}
        return
    with mps_server() as environment:
        if environment is None:
            log.warning(
                f"{parallel} jobs will time-share the GPU without CUDA MPS ({CONTROL} not found or not "
                "starting): measured on an H200, 8 arms at once trained no more in total than one alone and "
                "evaluated 10-20x slower; use --jobs 1, or make MPS available"
            )
        yield environment or {}


@dataclass
class SlurmOptions:
    """`--executor slurm`: settings over the spec's `slurm:` section, and how to follow the jobs."""

    settings: dict[str, Any] = field(default_factory=dict)  # partition, account, time, sbatch, signal_delay, ...
    wait: bool = False
    retry_failed: bool = False
    poll_seconds: float = 30.0


def run_study(
    spec_path: Path,
    study_dir: Path,
    *,
    parallel: int = 1,
    dry_run: bool = False,
    resources: Resources | None = None,
    slurm: SlurmOptions | None = None,
    seconds_per_iteration: float | None = None,
) -> Path | None:
    """Plan, run what is missing (here, or as Slurm jobs when `slurm` is given), and write the report; returns
    the report's path (None for a dry run, or when Slurm jobs were submitted without waiting for them)."""

    rundir.setup_logging(None)
    study_dir = Path(study_dir)
    plan = plan_study(spec_path, study_dir)
    load_reports = check_weights(plan)
    jobs = jobs_of(plan, study_dir, resources)
    if slurm is None:
        _check_local(jobs, study_dir)
    else:
        graph, settings = slurm_jobs(jobs, study_dir), _slurm_settings(plan, slurm)
    if dry_run:
        estimates, source = estimated_seconds(plan, seconds_per_iteration=seconds_per_iteration)
        print(describe_plan(plan, estimates, source))
        if slurm is not None:
            print(slurm_plan(graph, study_dir, settings, estimates, source))
        for text in load_reports:
            print(text)
        return None
    started = time.perf_counter()
    with _holding_study(spec_path, study_dir, plan):
        write_configs(jobs, study_dir)
        if slurm is not None:
            states = submit_missing(graph, study_dir, settings, slurm.retry_failed)
        else:
            with _gpu_sharing(parallel) as environment:
                failed = run_jobs(jobs, study_dir, parallel, environment)
    if slurm is not None:
        return _follow_slurm(graph, study_dir, states, slurm)
    report = build_report(study_dir)
    log.info(f"study finished in {format_duration(time.perf_counter() - started)}; report: {report}")
    if failed:
        raise ScratchdetError(
            "these jobs failed (see console.txt in their run directories): " + ", ".join(j.name for j in failed)
        )
    return report


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


def _check_local(jobs: dict[str, Job], study_dir: Path) -> None:
    """The local executor runs every job on this machine, and not while the study's Slurm jobs run."""
    wide = [j.name for j in jobs.values() if j.resources.nodes > 1]
    if wide:
        raise ScratchdetError(f"{', '.join(wide)}: more than one node needs --executor slurm")
    live = slurm_jobs_alive(study_dir)
    if live:
        raise ScratchdetError(
            f"{study_dir} has Slurm jobs queued or running ({', '.join(live)}): follow them with --executor slurm, "
            "or scancel them before running the study here"
        )


def _slurm_settings(plan: StudyPlan, options: SlurmOptions) -> SlurmSettings:
    try:
        return SlurmSettings.model_validate({**plan.spec.slurm.model_dump(), **options.settings})
    except ValidationError as exc:
        raise ScratchdetError(f"Slurm settings: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


def _follow_slurm(
    graph: dict[str, SlurmJob], study_dir: Path, states: dict[str, JobState], options: SlurmOptions
) -> Path | None:
    print(format_states(states), flush=True)
    if not options.wait:
        print(
            f"run the same command again to see the jobs' states (and submit what is missing); "
            f"`scratchdet report {study_dir}` writes the report of what has finished, any time"
        )
        return None
    final = wait_for(graph, study_dir, options.poll_seconds, lambda now: print(format_states(now), flush=True))
    report = build_report(study_dir)
    unfinished = [name for name, state in final.items() if state.label != "finished"]
    if unfinished:
        raise ScratchdetError(
            f"the report ({report}) lacks what these jobs did not finish: {', '.join(unfinished)}; run the study "
            "again to submit them again (a failed one needs --retry-failed once its cause is fixed)"
        )
    return report
