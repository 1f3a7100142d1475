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

from tqdm import tqdm

from scratchdet.assemble import detector_from_config
from scratchdet.config import SCRATCH_OVERRIDES, Config, load_config, without_init
from scratchdet.engine import rundir
from scratchdet.engine.mps import CONTROL, mps_server
from scratchdet.engine.pretrain import pretraining_step_seconds
from scratchdet.engine.run import detection_step_seconds, training_set_size
from scratchdet.errors import ScratchdetError
from scratchdet.io import LOCK_FILE, atomic_write_text, lock_holder, try_lock
from scratchdet.study.report import build_report
from scratchdet.study.spec import INITS_FILE, StudyPlan, expand, inits_record, read_spec

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
PLAIN_PROGRESS_SECONDS = 30.0


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


def jobs_of(plan: StudyPlan, study_dir: Path) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    for pre in plan.pretrain_jobs:
        jobs[f"pretrain/{pre.name}"] = Job(
            f"pretrain/{pre.name}", "pretrain", study_dir / "pretrain" / pre.name, pre.config, pre.iterations
        )
    for arm in plan.arms:
        config = arm.config
        if arm.keep_iterations:
            config = config.model_copy(deep=True)
            config.output.keep_iterations = sorted(set(arm.keep_iterations))
        job = Job(f"arms/{arm.name}", "train", study_dir / "arms" / arm.name, config, arm.iterations)
        if arm.pretrain:
            job.needs.append(f"pretrain/{arm.pretrain}")
        if arm.fork_parent:
            job.fork_from, job.fork_iteration = study_dir / "arms" / arm.fork_parent, arm.fork_iteration
        jobs[job.name] = job
    return jobs


def _prepare_fork(job: Job) -> None:
    assert job.fork_from is not None
    rundir.fork(job.fork_from, job.run_dir, job.fork_iteration, job.config)


def _start(job: Job, study_dir: Path, threads: int | None, environment: dict[str, str]) -> None:
    config_path = study_dir / "configs" / f"{job.name.replace('/', '__')}.yaml"
    atomic_write_text(config_path, job.config.to_yaml())
    if job.fork_from is not None and not job.started:
        _prepare_fork(job)
    arguments = ["--resume", str(job.run_dir)] if job.started else [str(config_path), "--out", str(job.run_dir)]
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


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def describe_plan(plan: StudyPlan, measure: bool = True) -> str:
    """The `--dry-run` table: every job, its iterations and images, forks, and a time estimate from a short
    measured warm-up of each distinct model (`measure=False` leaves the estimate out)."""

    speeds: dict[str, float] = {}
    rows = [f"{'job':<40s} {'iterations':>10s} {'images':>10s} {'starts at':>10s} {'est. time':>10s}"]
    total_seconds = 0.0
    for job in plan.pretrain_jobs:
        seconds = pretraining_step_seconds(job.config) if measure else 0.0
        total_seconds += seconds * job.iterations
        images = job.iterations * job.config.pretrain.images_per_batch
        rows.append(
            f"{'pretrain/' + job.name:<40s} {job.iterations:>10,d} {images:>10,d} {0:>10d} "
            f"{_duration(seconds * job.iterations) if measure else '-':>10s}"
        )
    for arm in plan.arms:
        key = f"{arm.values['norm']}"
        if measure and key not in speeds:
            speeds[key] = detection_step_seconds(without_init(arm.config))
        seconds = speeds.get(key, 0.0) * (arm.iterations - arm.fork_iteration)
        total_seconds += seconds
        images = arm.iterations * arm.config.solver.images_per_batch
        start = f"{arm.fork_iteration}" if arm.fork_parent else "0"
        rows.append(
            f"{'arms/' + arm.name:<40s} {arm.iterations:>10,d} {images:>10,d} {start:>10s} "
            f"{_duration(seconds) if measure else '-':>10s}"
        )
        if arm.fork_parent:
            rows.append(f"{'':<6s}forked from {arm.fork_parent} at its first lr step ({arm.fork_iteration} iterations)")
        if arm.cost:
            rows.append(f"{'':<6s}cost-matched: {arm.cost}")
    total = sum(a.iterations for a in plan.arms)
    rows.append(
        f"forking saves {plan.iterations_saved:,} of {total:,} detection iterations "
        f"({100 * plan.iterations_saved / max(total, 1):.0f}%)"
    )
    if measure:
        measured = ", ".join(f"{norm}: {s:.3f} s/it" for norm, s in speeds.items())
        rows.append(
            f"estimated training time: {_duration(total_seconds)} (measured {measured}; evaluation and "
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


def run_study(spec_path: Path, study_dir: Path, *, parallel: int = 1, dry_run: bool = False) -> Path | None:
    """Plan, run what is missing, and write the report; returns the report's path (None for a dry run)."""

    rundir.setup_logging(None)
    study_dir = Path(study_dir)
    plan = plan_study(spec_path, study_dir)
    load_reports = check_weights(plan)
    if dry_run:
        print(describe_plan(plan))
        for text in load_reports:
            print(text)
        return None
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
        started = time.perf_counter()
        with _gpu_sharing(parallel) as environment:
            failed = run_jobs(jobs_of(plan, study_dir), study_dir, parallel, environment)
        report = build_report(study_dir)
    finally:
        os.close(lock)
    log.info(f"study finished in {_duration(time.perf_counter() - started)}; report: {report}")
    if failed:
        raise ScratchdetError(
            "these jobs failed (see console.txt in their run directories): " + ", ".join(j.name for j in failed)
        )
    return report
