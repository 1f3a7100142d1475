"""The local executor: each run of the study a `scratchdet train|pretrain` process on this machine.

A run is one process from where it stands to its end, its parts included (an arm forked from it starts as soon as
the checkpoint at its fork iteration exists); at most `parallel` at a time, with the GPU shared through CUDA MPS
when there is one. Each process writes its output to `console.txt` in its run directory. The processes are this
process's children: `submit` runs them to the end, and they die with it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from scratchdet.engine import rundir
from scratchdet.engine.hooks import format_duration
from scratchdet.engine.mps import CONTROL, mps_server
from scratchdet.errors import ScratchdetError
from scratchdet.study.jobs import JobGraph, JobState, JobStatus, StudyJob, runs_of
from scratchdet.study.spec import StudyPlan
from scratchdet.study.timeline import record_event

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
PLAIN_PROGRESS_SECONDS = 30.0


class LocalExecutor:
    retry_hint = "see console.txt in their run directories, fix the cause, and run the study again"

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = parallel
        self.failed: set[str] = set()  # runs that failed, or could not start because a run they need failed

    @classmethod
    def from_options(cls, jobs: int | None = None) -> LocalExecutor:
        return cls(jobs or 1)

    def check(self, plan: StudyPlan, graph: JobGraph, study_dir: Path) -> None:
        wide = [name for name, job in graph.items() if job.resources.nodes > 1]
        if wide:
            raise ScratchdetError(f"{', '.join(wide)}: more than one node needs --executor slurm")

    def describe(self, graph: JobGraph, study_dir: Path, estimates: dict[str, float], source: str) -> str:
        runs = runs_of(graph)
        if not estimates or any(run not in estimates for run in runs):
            return ""
        wall = simulated_wall_seconds(graph, self.parallel, estimates)
        return (
            f"estimated wall time with {self.parallel} run(s) at once (--jobs): {format_duration(wall)}, the longest "
            "chain of work first (training only; runs sharing this machine each train slower than measured alone)"
        )

    def submit(self, graph: JobGraph, study_dir: Path) -> None:
        with _gpu_sharing(self.parallel) as environment:
            self.failed = _run(graph, self.parallel, environment, study_dir)

    def wait(self, graph: JobGraph, study_dir: Path) -> dict[str, JobState]:
        """Every job's state (`submit` has run them to their end)."""
        return {name: self._state(job) for name, job in graph.items()}

    def _state(self, job: StudyJob) -> JobState:
        if job.done():
            return JobState(JobStatus.FINISHED)
        if job.run in self.failed:
            return JobState(JobStatus.FAILED, f"failed; see {job.run_dir / 'console.txt'}")
        return JobState(JobStatus.NEW)

    @staticmethod
    def live_jobs(study_dir: Path) -> list[str]:
        return []  # they die with the study process


class _Run:
    """One run's process: its parts, the first of which says what it needs."""

    def __init__(self, parts: list[StudyJob]) -> None:
        self.parts, self.first, self.last = parts, parts[0], parts[-1]
        self.name = self.first.run
        self.process: subprocess.Popen[bytes] | None = None

    def ready(self, graph: JobGraph) -> bool:
        waiting = [n for n in self.first.needs if not graph[n].done()]
        # A forked run that has started has its fork checkpoint: only what else it needs matters.
        return all(n == self.first.fork_part and self.first.started for n in waiting)

    def needs_run(self, graph: JobGraph) -> set[str]:
        return {graph[n].run for n in self.first.needs}

    def progress(self) -> int:
        return max(0, self.last.progress() - self.first.start)

    @property
    def length(self) -> int:
        return self.last.iterations - self.first.start


def _run(graph: JobGraph, parallel: int, environment: dict[str, str], study_dir: Path) -> set[str]:
    """Run every run not yet done, at most `parallel` at a time; returns the names of those that failed. Each
    start and end goes to the study's timeline (study/timeline.py)."""
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    runs = start_order([_Run(parts) for parts in runs_of(graph).values()], graph)
    progress = _Progress(runs)
    for run in runs:
        if run.last.done():
            log.info(f"{run.name}: already finished, skipped")
    pending = [run for run in runs if not run.last.done()]
    running: list[_Run] = []
    failed: set[str] = set()
    if pending:  # a call that finds everything done keeps the timeline of the call that did it
        record_event(study_dir, "submitted", slots=parallel)
    try:
        while pending or running:
            for run in [r for r in running if r.process is not None and r.process.poll() is not None]:
                running.remove(run)
                code = run.process.returncode if run.process is not None else None
                record_event(study_dir, "ended", run=run.name, exit_code=code)
                if code != 0 or not run.last.done():
                    failed.add(run.name)
                    log.error(f"{run.name} failed (exit {code}):\n    {_console_tail(run.last)}")
            for run in list(pending):
                if run.needs_run(graph) & failed:
                    failed.add(run.name)
                    pending.remove(run)
                    log.error(f"{run.name} skipped: a job it needs failed")
                elif len(running) < parallel and run.ready(graph):
                    run.process = _start(run.last, threads, environment)
                    record_event(study_dir, "started", run=run.name)
                    pending.remove(run)
                    running.append(run)
            if not running and pending and not any(r.ready(graph) for r in pending):
                raise ScratchdetError(f"study stuck: {[r.name for r in pending]} wait for jobs that cannot finish")
            progress.update(running)
            time.sleep(POLL_SECONDS)
    finally:
        for run in running:  # interrupted: stop the children; their checkpoints let the study resume
            if run.process is not None and run.process.poll() is None:
                run.process.terminate()
                record_event(study_dir, "ended", run=run.name, exit_code=None, stopped=True)
        progress.close()
    return failed


def start_order(runs: list[_Run], graph: JobGraph) -> list[_Run]:
    """`runs` by the longest chain of work each one heads, longest first: its own iterations plus those of the
    longest chain of runs that wait for it (its forks, for pre-training the arms it initialises). A free slot goes to
    the first ready run in this order, so the chain that decides when the study ends starts as soon as it can; the
    order changes when a run trains, never what it computes."""
    waiting_for: dict[str, list[_Run]] = {}
    for run in runs:
        for name in run.needs_run(graph):
            waiting_for.setdefault(name, []).append(run)
    chains: dict[str, int] = {}

    def chain(run: _Run) -> int:
        if run.name not in chains:
            chains[run.name] = run.length + max((chain(r) for r in waiting_for.get(run.name, [])), default=0)
        return chains[run.name]

    return sorted(runs, key=lambda run: (-chain(run), run.name))


def simulated_wall_seconds(graph: JobGraph, parallel: int, seconds: Mapping[str, float], startup: float = 0.0) -> float:
    """How long this executor takes to run every run of `graph` from nothing, if each run (pretrain/NAME,
    arms/NAME) takes `startup` plus `seconds[run]`, spread over its parts by their iterations: at most `parallel`
    at once, a free slot to the first ready run in `start_order`, a fork ready once the part before its fork
    iteration has ended. Runs are assumed not to slow each other beyond what `seconds` holds."""
    runs = start_order([_Run(parts) for parts in runs_of(graph).values()], graph)
    ended: dict[str, float] = {}  # job -> when it ends, for the jobs of started runs
    running: dict[str, float] = {}  # run -> when it ends
    now = 0.0
    while runs or running:
        for run in list(runs):
            if len(running) < parallel and all(ended.get(n, math.inf) <= now for n in run.first.needs):
                clock = now + startup
                for part in run.parts:
                    clock += seconds[run.name] * (part.end - part.start) / max(run.length, 1)
                    ended[part.name] = clock
                running[run.name] = clock
                runs.remove(run)
        if not running:
            raise ScratchdetError(f"study stuck: {[r.name for r in runs]} wait for jobs that never run")
        now = min(t for t in ended.values() if t > now) if any(t > now for t in ended.values()) else now
        running = {name: end for name, end in running.items() if end > now}
    return max(ended.values(), default=0.0)


def _start(job: StudyJob, threads: int | None, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """`scratchdet train|pretrain` for the whole of `job`'s run: a new run, a fork, or a resumed one."""
    if job.fork_from is not None and not job.started:
        rundir.fork(job.fork_from, job.run_dir, job.fork_iteration, job.config)
    resumed = job.started  # a fork is resumed from its copy of the parent's checkpoint
    arguments = ["--resume", str(job.run_dir)] if resumed else [str(job.config_file), "--out", str(job.run_dir)]
    if job.resources.processes > 1:
        arguments += ["--nproc", str(job.resources.processes)]
    job.run_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **environment}
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    with open(job.run_dir / "console.txt", "ab") as console:  # the child has its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "scratchdet", job.command, *arguments],
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
        )
    log.info(f"started {job.run}" + (" (resumed)" if resumed else ""))
    return process


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


def _console_tail(job: StudyJob, lines: int = 8) -> str:
    try:
        text = (job.run_dir / "console.txt").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n    ".join(text[-lines:])


class _Progress:
    """A bar over all iterations on a terminal; a status line every 30 s otherwise."""

    def __init__(self, runs: list[_Run]) -> None:
        self.runs = runs
        self.total = sum(run.length for run in runs)
        self.bar = tqdm(total=self.total, desc="study", unit="it") if sys.stderr.isatty() else None
        self.last_line = 0.0

    def update(self, running: list[_Run]) -> None:
        done = sum(run.progress() for run in self.runs)
        if self.bar is not None:
            self.bar.n = min(done, self.total)
            self.bar.set_postfix_str(", ".join(run.name.split("/")[-1] for run in running)[:60])
            self.bar.refresh()
        elif time.monotonic() - self.last_line > PLAIN_PROGRESS_SECONDS:
            self.last_line = time.monotonic()
            finished = sum(run.last.done() for run in self.runs)
            log.info(f"study: {done}/{self.total} iterations, {finished}/{len(self.runs)} jobs done")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
                "starting): together they train no faster than one alone, and evaluate far slower; use --jobs 1, "
                "or make MPS available"
            )
        yield environment or {}
