"""The Slurm executor: every job of a study an sbatch job, submitted with submitit from the login node.

    STUDY_DIR/slurm/jobs.json        the Slurm job id of every job submitted (the study's record of its jobs)
    STUDY_DIR/slurm/logs/            submitit's files: sbatch scripts, pickled tasks, each job's log (%j_0_log.*)
    STUDY_DIR/slurm/outcomes/*.json  how each job's last attempt ended, written by the job itself

Submitting is idempotent: a re-run of `scratchdet study ... --executor slurm` shows every job's state and submits
only jobs that are neither finished, queued nor running, with Slurm dependencies (`afterok`) on the jobs they need
(study/jobs.py), so nothing polls on the login node. What a job runs on its nodes, and how it checkpoints before
its time limit and is requeued, is in study/slurm_node.py. `scancel` stops a job with a checkpoint too; the next
`scratchdet study` submits it again. A job that fails for a reason of its own (exit status other than a pause) is
reported with its log and is not submitted again unless asked (`--retry-failed`).
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from pydantic import ValidationError

from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write_text
from scratchdet.study.jobs import JobGraph, JobState, JobStatus, StudyJob, format_states
from scratchdet.study.slurm_node import NodeTask, task_of
from scratchdet.study.slurm_plan import (
    JOBS_FILE,
    LOGS,
    SLURM_DIR,
    SlurmSettings,
    afterok,
    outcome_path,
    signal_problem,
    slurm_parameters,
    slurm_plan,
)
from scratchdet.study.spec import StudyPlan

log = logging.getLogger(__name__)


class SlurmExecutor:
    retry_hint = "run the study again to submit them again (a failed one needs --retry-failed once its cause is fixed)"

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        *,
        wait: bool = False,
        retry_failed: bool = False,
        poll_seconds: float = 30.0,
    ) -> None:
        """`settings` over the spec's `slurm:` section (partition, account, time, sbatch, signal_delay, ...);
        `wait`: follow the jobs until none is queued or running, asking Slurm every `poll_seconds`."""
        self.overrides = settings or {}
        self.follow, self.retry_failed, self.poll_seconds = wait, retry_failed, poll_seconds
        self.settings = SlurmSettings()
        self.submitted: dict[str, JobState] = {}

    @classmethod
    def from_options(
        cls,
        wait: bool = False,
        retry_failed: bool = False,
        poll: float | None = None,
        sbatch: list[str] | None = None,
        **settings: Any,
    ) -> SlurmExecutor:
        """From `scratchdet study`'s options: --partition, --account, --time, --signal-delay, --max-requeues
        (`settings`), --sbatch KEY=VALUE, --wait, --poll, --retry-failed."""
        if sbatch:
            settings["sbatch"] = dict(_key_value(item) for item in sbatch)
        return cls(settings, wait=wait, retry_failed=retry_failed, poll_seconds=30.0 if poll is None else poll)

    @staticmethod
    def live_jobs(study_dir: Path) -> list[str]:
        return slurm_jobs_alive(study_dir)

    def check(self, plan: StudyPlan, graph: JobGraph, study_dir: Path) -> None:
        try:
            self.settings = SlurmSettings.model_validate({**plan.spec.slurm, **self.overrides})
        except ValidationError as exc:
            key = str(exc.errors()[0]["loc"][0])
            given = f"--{key.replace('_', '-')}" if key in self.overrides else f"the spec's slurm.{key}"
            raise ScratchdetError(f"Slurm settings: {given}: {exc.errors()[0]['msg']}") from None

    def describe(self, graph: JobGraph, study_dir: Path, estimates: dict[str, float], source: str) -> str:
        return slurm_plan(graph, study_dir, self.settings, estimates, source)

    def submit(self, graph: JobGraph, study_dir: Path) -> None:
        self.submitted = submit_missing(graph, study_dir, self.settings, self.retry_failed)

    def wait(self, graph: JobGraph, study_dir: Path) -> dict[str, JobState] | None:
        print(format_states(self.submitted, "slurm id"), flush=True)
        if not self.follow:
            print(
                f"run the same command again to see the jobs' states (and submit what is missing); "
                f"`scratchdet report {study_dir}` writes the report of what has finished, any time"
            )
            return None
        return wait_for(graph, study_dir, self.poll_seconds, _show)


def _show(states: dict[str, JobState]) -> None:
    print(format_states(states, "slurm id"), flush=True)


def _key_value(item: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key:
        raise ScratchdetError(f"--sbatch {item!r}: give KEY=VALUE, e.g. --sbatch qos=high")
    return key.lstrip("-"), value


def read_record(study_dir: Path) -> dict[str, dict[str, Any]]:
    path = study_dir / SLURM_DIR / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ScratchdetError(f"{path} is damaged ({exc}); remove it to forget the submitted job ids") from None


def _write_record(study_dir: Path, record: dict[str, dict[str, Any]]) -> None:
    atomic_write_text(study_dir / SLURM_DIR / JOBS_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _slurm_command(arguments: list[str], unknown_is_empty: bool = False) -> str:
    try:
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise ScratchdetError(f"{arguments[0]} not found: --executor slurm runs where Slurm's commands are") from None
    if result.returncode != 0:
        if unknown_is_empty and "Invalid job id" in result.stderr:  # squeue --jobs with one id Slurm forgot
            return ""
        raise ScratchdetError(f"`{shlex.join(arguments)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Slurm's (state, reason) of those of `job_ids` it still holds (pending, running, requeued...)."""
    if not job_ids:
        return {}
    query = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", f"--jobs={','.join(job_ids)}"]
    text = _slurm_command(query, unknown_is_empty=True)
    states = {}
    for line in text.splitlines():
        job_id, state, reason = [*line.split("|"), "", ""][:3]
        states[job_id.strip()] = (state.strip(), reason.strip())
    return states


def _ended_state(job_id: str) -> str:
    """How Slurm says a job ended (CANCELLED, TIMEOUT, NODE_FAIL...) while it still remembers it; else ''."""
    result = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True)
    for item in result.stdout.split():
        if item.startswith("JobState="):
            return item.split("=", 1)[1]
    return ""


# Slurm still holds the job: it will run, or is running (a requeued job passes through REQUEUED to PENDING).
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
LIVE_STATES |= {"RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def job_states(
    jobs: JobGraph, study_dir: Path, record: dict[str, dict[str, Any]], retry_failed: bool
) -> dict[str, JobState]:
    live = queue([entry["job_id"] for entry in record.values()])
    states: dict[str, JobState] = {}
    for name, job in jobs.items():
        job_id = str(record.get(name, {}).get("job_id", ""))
        if job.done():
            states[name] = JobState(JobStatus.FINISHED, job_id=job_id)
            continue
        if job_id in live and live[job_id][0] in LIVE_STATES:
            state, reason = live[job_id]
            if state == "RUNNING":
                label = f"running (iteration {job.progress()} of {job.end})"
                states[name] = JobState(JobStatus.RUNNING, label, job_id)
            else:
                label = f"queued ({reason})" if state == "PENDING" and reason and reason != "None" else "queued"
                states[name] = JobState(JobStatus.QUEUED, label if state == "PENDING" else state.lower(), job_id)
            continue
        outcome = _read_outcome(study_dir, name)
        if job_id and outcome.get("job_id") == job_id and outcome.get("state") == "failed":
            logs = f"{outcome.get('console')} and {study_dir / SLURM_DIR / LOGS / (job_id + '_0_log.err')}"
            label = f"failed (exit status {outcome.get('exit')}); see {logs}"
            status = JobStatus.NEW if retry_failed else JobStatus.FAILED
            states[name] = JobState(status, label, job_id, submit=retry_failed)
        elif job_id:
            ended = _ended_state(job_id) or "ended"
            states[name] = JobState(JobStatus.UNFINISHED, f"job {job_id} {ended.lower()} unfinished", job_id, True)
        else:
            states[name] = JobState(JobStatus.NEW, submit=True)
    for name, job in jobs.items():  # a job whose prerequisite failed cannot run
        blocked = [n for n in job.needs if states[n].status in (JobStatus.FAILED, JobStatus.WAITING)]
        if states[name].submit and blocked:
            states[name] = JobState(JobStatus.WAITING, f"waiting: needs {', '.join(blocked)}", states[name].job_id)
    return states


def _read_outcome(study_dir: Path, name: str) -> dict[str, Any]:
    path = outcome_path(study_dir, name)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def _submitit_executor(
    study_dir: Path, job: StudyJob, settings: SlurmSettings, dependency: str
) -> submitit.SlurmExecutor:
    if settings.time is None:
        raise ScratchdetError(
            "give the jobs' time limit: --time MINUTES (or slurm.time in the spec), at most the partition's; a job "
            "that reaches it checkpoints and is requeued (--max-requeues)"
        )
    problem = signal_problem(settings)
    if problem:
        raise ScratchdetError(problem)
    try:
        executor = submitit.SlurmExecutor(folder=study_dir / SLURM_DIR / LOGS, max_num_timeout=settings.max_requeues)
    except RuntimeError as exc:  # submitit looks for srun
        raise ScratchdetError(f"--executor slurm submits from a machine with Slurm's commands: {exc}") from None
    executor.update_parameters(**slurm_parameters(job, settings, dependency))
    return executor


def submit_missing(jobs: JobGraph, study_dir: Path, settings: SlurmSettings, retry_failed: bool) -> dict[str, JobState]:
    """Submit every job that should run and is not queued or running; returns every job's state (with the ids of
    those just submitted)."""
    record = read_record(study_dir)
    states = job_states(jobs, study_dir, record, retry_failed)
    ids = {name: state.job_id for name, state in states.items() if state.live}
    for name, job in jobs.items():  # in dependency order: the ids of what a job needs are known
        if not states[name].submit:
            continue
        dependency = afterok(job, ids, jobs)
        executor = _submitit_executor(study_dir, job, settings, dependency)
        try:
            submitted = executor.submit(NodeTask(task_of(job, outcome_path(study_dir, name))))
        except submitit.core.utils.FailedJobError as exc:  # sbatch refused it; what was submitted is recorded
            raise ScratchdetError(
                f"sbatch refused {name}: {str(exc).strip() or 'no reason given'}. Fix the Slurm settings (flags or "
                "the spec's slurm: and resources:) and run the study again"
            ) from None
        ids[name] = str(submitted.job_id)
        again = "; submitted again" if states[name].job_id else "; submitted"
        states[name] = JobState(JobStatus.QUEUED, states[name].label + again, ids[name])
        record[name] = {"job_id": ids[name], "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_record(study_dir, record)  # after each: a submission cut short still knows what it submitted
        log.info(f"submitted {name} as Slurm job {ids[name]}" + (f" ({dependency})" if dependency else ""))
    return states


def wait_for(
    jobs: JobGraph,
    study_dir: Path,
    poll_seconds: float,
    on_change: Callable[[dict[str, JobState]], None],
) -> dict[str, JobState]:
    """Poll Slurm until no job of the study is queued or running; `on_change` sees each new set of states."""
    shown = ""
    while True:
        states = job_states(jobs, study_dir, read_record(study_dir), retry_failed=False)
        # shown again when a state changes (not on every iteration a running job logs)
        text = "\n".join(
            f"{n}: {s.status.value if s.status is JobStatus.RUNNING else s.label}" for n, s in states.items()
        )
        if text != shown:
            on_change(states)
            shown = text
        if not any(state.live for state in states.values()):
            return states
        time.sleep(poll_seconds)


def slurm_jobs_alive(study_dir: Path) -> list[str]:
    """The study's jobs Slurm still holds (queued or running); none where Slurm's commands are absent."""
    record = read_record(Path(study_dir))
    if not record:
        return []
    try:
        live = queue([entry["job_id"] for entry in record.values()])
    except ScratchdetError:
        return []
    held = {job_id for job_id, (state, _) in live.items() if state in LIVE_STATES}
    return [f"{name} ({entry['job_id']})" for name, entry in record.items() if str(entry["job_id"]) in held]
