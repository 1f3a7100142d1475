"""Running a study on a Slurm cluster: every pre-training job and arm an sbatch job, submitted with submitit.

    STUDY_DIR/slurm/jobs.json        the Slurm job id of every job submitted (the study's record of its jobs)
    STUDY_DIR/slurm/logs/            submitit's files: sbatch scripts, pickled tasks, each job's log (%j_0_log.*)
    STUDY_DIR/slurm/outcomes/*.json  how each job's last attempt ended, written by the job itself

The study directory (on a file system the nodes share) stays the one source of truth: a job is finished when its
run directory says so, whoever ran it. Submitting is idempotent: a re-run of `scratchdet study ... --executor
slurm` shows every job's state and submits only jobs that are neither finished, queued nor running, with Slurm
dependencies on the jobs they need (`afterok`), so nothing polls on the login node:

- an arm starts after the pre-training it starts from;
- a fork parent is split at each fork iteration into jobs that pause there (`train --stop-at`); a forked arm starts
  after the job that writes its fork checkpoint, so it trains beside the rest of its parent.

On the node, a job runs `scratchdet train|pretrain --resume RUN_DIR` (the run directory is prepared there: its
config, or the fork) as its own process(es): `--nproc` on one node, torchrun with a rendezvous at the first node of
the allocation on several. `signal_delay` seconds before the time limit (90 by default), Slurm signals the job;
submitit calls `NodeTask.checkpoint`, which sends SIGTERM to the training, which saves a checkpoint at the end of
its step and exits, and submitit requeues the job, which continues from that checkpoint exactly as `--resume`
does (pre-emption is the same path). `scancel` sends SIGTERM too: the training checkpoints, the job ends, and the
next `scratchdet study` submits it again. A job that fails for a reason of its own (exit status other than a
pause) is reported with its log and is not submitted again unless asked (`--retry-failed`).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.slurm import slurm as submitit_slurm

from scratchdet.config import load_config
from scratchdet.engine import rundir
from scratchdet.engine.hooks import format_duration
from scratchdet.errors import ScratchdetError
from scratchdet.io import atomic_write_text
from scratchdet.study.resources import JobResources, SlurmSettings
from scratchdet.study.spec import config_file

if TYPE_CHECKING:
    from scratchdet.study.runner import Job

log = logging.getLogger(__name__)

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
LOGS = "logs"
OUTCOMES = "outcomes"
STOP_GRACE_SECONDS = 60  # how long the training may take to reach the end of its step and save, once told to stop
PAUSED = 143  # the exit status of a training stopped by SIGTERM (engine/trainer.py)


# ------------------------------------------------------------------------------------------ the job graph


@dataclass
class SlurmJob:
    """One sbatch job: a whole run, or a fork parent's part up to `stop_at`."""

    name: str  # arms/NAME, arms/NAME@ITER (the part up to ITER), pretrain/NAME
    command: str  # train | pretrain
    run_dir: Path
    config_file: Path
    iterations: int
    resources: JobResources
    stop_at: int | None = None
    needs: list[str] = field(default_factory=list)
    fork_from: Path | None = None
    fork_iteration: int = 0
    start: int = 0  # the iteration it starts from: a fork's, or where the previous part of its run paused

    @property
    def end(self) -> int:
        return self.stop_at if self.stop_at is not None else self.iterations

    def done(self) -> bool:
        if rundir.is_finished(self.run_dir):
            return True
        return self.stop_at is not None and rundir.checkpoint_file(self.run_dir, self.stop_at).is_file()

    def progress(self) -> int:
        return rundir.last_logged_iteration(self.run_dir, default=self.fork_iteration)


def slurm_jobs(jobs: dict[str, Job], study_dir: Path) -> dict[str, SlurmJob]:
    """The runner's jobs (study/runner.py `Job`s) as Slurm jobs, fork parents split at their fork iterations."""
    forks: dict[str, set[int]] = {}
    for job in jobs.values():
        if job.fork_from is not None:
            forks.setdefault(_arm(job.fork_from), set()).add(job.fork_iteration)
    result: dict[str, SlurmJob] = {}
    for job in jobs.values():
        config = config_file(study_dir, job.name)
        previous: list[str] = list(job.needs)
        start = job.fork_iteration
        for iteration in sorted(forks.get(job.name, ())):
            part = f"{job.name}@{iteration}"
            result[part] = SlurmJob(
                part, job.command, job.run_dir, config, iteration, job.resources, iteration, previous, start=start
            )
            previous, start = [part], iteration
        whole = SlurmJob(job.name, job.command, job.run_dir, config, job.iterations, job.resources, start=start)
        whole.needs = previous
        if job.fork_from is not None:
            whole.needs = [*job.needs, f"{_arm(job.fork_from)}@{job.fork_iteration}"]
            whole.fork_from, whole.fork_iteration = job.fork_from, job.fork_iteration
        result[job.name] = whole
    return _in_dependency_order(result)


def _in_dependency_order(jobs: dict[str, SlurmJob]) -> dict[str, SlurmJob]:
    ordered: dict[str, SlurmJob] = {}

    def visit(name: str) -> None:
        if name not in ordered:
            for need in jobs[name].needs:
                visit(need)
            ordered[name] = jobs[name]

    for name in jobs:
        visit(name)
    return ordered


def _arm(run_dir: Path) -> str:
    return f"arms/{run_dir.name}"


# ------------------------------------------------------------------------------------------ on the node


@dataclass(frozen=True)
class Task:
    """What a job runs on its nodes (plain data: submitit pickles it with the job)."""

    name: str
    command: str
    run_dir: str
    config_file: str
    processes_per_node: int
    nodes: int
    outcome_file: str
    stop_at: int | None = None
    fork_from: str | None = None
    fork_iteration: int = 0


class NodeTask(submitit.helpers.Checkpointable):
    """Runs one job's training on a node (once per node), and stops it with a checkpoint when Slurm asks."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.process: subprocess.Popen[bytes] | None = None

    def __call__(self) -> str:
        task, environment = self.task, submitit.JobEnvironment()
        if environment.node == 0:
            _prepare(task)
        else:  # the processes read the run's config as they start
            _wait_for_run_directory(Path(task.run_dir))
        command = training_command(task, environment.node, environment.hostnames, str(environment.job_id))
        console = Path(task.run_dir) / "console.txt"
        log.info(f"{task.name}: {shlex.join(command)} (output in {console})")
        with open(console, "ab") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_training_environment(task),
                preexec_fn=_ignore_slurm_warning,
            )
        code = _wait(self.process, None)
        assert code is not None  # no timeout
        if environment.node != 0:
            return f"node {environment.node}: exit {code}"
        state = "done" if code == 0 else "stopped" if code == PAUSED else "failed"
        _write_outcome(task, str(environment.job_id), state, code)
        if state != "done":
            raise ScratchdetError(f"{task.name} {state} (exit status {code}); its output: {console}")
        return state

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Slurm's warning before the time limit (or pre-emption): the training saves and stops; resubmit."""
        process = self.process
        if process is not None and process.poll() is None:
            log.info(f"{self.task.name}: asking the training to checkpoint and stop")
            process.send_signal(signal.SIGTERM)
            if _wait(process, STOP_GRACE_SECONDS) is None:
                log.warning(f"no checkpoint after {STOP_GRACE_SECONDS} s: stopping it; it resumes from its last one")
                process.kill()
        return submitit.helpers.DelayedSubmission(NodeTask(self.task))

    def __getstate__(self) -> dict[str, Any]:
        return {"task": self.task, "process": None}  # a process does not travel


def _wait(process: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    """The exit status of `process`, or None after `timeout` seconds. Polls: `checkpoint` runs in a signal handler
    that interrupts this very wait, and a blocking `Popen.wait` holds a lock the handler's wait would need."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (code := process.poll()) is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return code


def _prepare(task: Task) -> None:
    """The run directory, before the first start: its config, or the fork from the parent's checkpoint."""
    run_dir = Path(task.run_dir)
    if rundir.is_run(run_dir):
        return
    config = load_config(task.config_file)
    if task.fork_from is not None:
        rundir.fork(Path(task.fork_from), run_dir, task.fork_iteration, config)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, config)


def _wait_for_run_directory(run_dir: Path, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not rundir.is_run(run_dir):
        if time.monotonic() > deadline:
            raise ScratchdetError(f"{run_dir} was not prepared by the job's first node within {seconds:.0f} s")
        time.sleep(1)


def training_command(task: Task, node: int, hostnames: Sequence[str], job_id: str) -> list[str]:
    """`scratchdet train|pretrain --resume RUN_DIR` as this node runs it: alone, under `--nproc`, or under torchrun
    with a static rendezvous at the allocation's first node (a port chosen from the job id)."""
    arguments = [task.command, "--resume", task.run_dir]
    if task.stop_at is not None:
        arguments += ["--stop-at", str(task.stop_at)]
    if task.nodes > 1:
        port = 20000 + int(job_id) % 20000
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={task.nodes}",
            f"--nproc-per-node={task.processes_per_node}",
            f"--node-rank={node}",
            f"--master-addr={hostnames[0]}",
            f"--master-port={port}",
            "--module",
            "scratchdet",
            *arguments,
        ]
    if task.processes_per_node > 1:
        arguments += ["--nproc", str(task.processes_per_node)]
    return [sys.executable, "-m", "scratchdet", *arguments]


def _training_environment(task: Task) -> dict[str, str]:
    """Threads per process from the CPUs Slurm gave the task (the machine's count is not ours to use)."""
    environment = dict(os.environ)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        environment["OMP_NUM_THREADS"] = str(max(1, int(cpus) // task.processes_per_node))
    return environment


def _ignore_slurm_warning() -> None:
    """In the training process, before it runs: Slurm's time-limit signal is for submitit (this node's task),
    which then stops the training with SIGTERM; left as is, it would kill the training without a checkpoint."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _write_outcome(task: Task, job_id: str, state: str, code: int) -> None:
    path = Path(task.outcome_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"job_id": job_id, "state": state, "exit": code, "console": str(Path(task.run_dir) / "console.txt")}
    atomic_write_text(path, json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------ on the login node


@dataclass
class JobState:
    """Where one job stands: `label` as shown; `live` while Slurm holds it; `submit` when it should be submitted
    (again) by the next `submit_missing`."""

    job_id: str
    label: str
    live: bool = False
    submit: bool = False
    failed: bool = False


def _outcome_path(study_dir: Path, name: str) -> Path:
    return study_dir / SLURM_DIR / OUTCOMES / f"{name.replace('/', '__')}.json"


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
    jobs: dict[str, SlurmJob], study_dir: Path, record: dict[str, dict[str, Any]], retry_failed: bool
) -> dict[str, JobState]:
    live = queue([entry["job_id"] for entry in record.values()])
    states: dict[str, JobState] = {}
    for name, job in jobs.items():
        job_id = str(record.get(name, {}).get("job_id", ""))
        if job.done():
            states[name] = JobState(job_id, "finished")
            continue
        if job_id in live and live[job_id][0] in LIVE_STATES:
            state, reason = live[job_id]
            if state == "RUNNING":
                label = f"running (iteration {job.progress()} of {job.stop_at or job.iterations})"
            elif state == "PENDING":
                label = f"queued ({reason})" if reason and reason != "None" else "queued"
            else:
                label = state.lower()
            states[name] = JobState(job_id, label, live=True)
            continue
        outcome = _read_outcome(study_dir, name)
        if job_id and outcome.get("job_id") == job_id and outcome.get("state") == "failed":
            logs = f"{outcome.get('console')} and {study_dir / SLURM_DIR / LOGS / (job_id + '_0_log.err')}"
            label = f"failed (exit status {outcome.get('exit')}); see {logs}"
            states[name] = JobState(job_id, label, submit=retry_failed, failed=not retry_failed)
        elif job_id:
            ended = _ended_state(job_id) or "ended"
            states[name] = JobState(job_id, f"job {job_id} {ended.lower()} unfinished", submit=True)
        else:
            states[name] = JobState("", "new", submit=True)
    for name, job in jobs.items():  # a job whose prerequisite failed cannot run
        blocked = [n for n in job.needs if states[n].failed or (states[n].label.startswith("waiting"))]
        if states[name].submit and blocked:
            states[name] = JobState(states[name].job_id, f"waiting: needs {', '.join(blocked)}")
    return states


def _read_outcome(study_dir: Path, name: str) -> dict[str, Any]:
    path = _outcome_path(study_dir, name)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def format_states(states: dict[str, JobState]) -> str:
    rows = [f"{'job':<48s} {'slurm id':>9s}  state"]
    rows += [f"{name:<48s} {state.job_id or '-':>9s}  {state.label}" for name, state in states.items()]
    return "\n".join(rows)


def slurm_parameters(job: SlurmJob, settings: SlurmSettings, dependency: str) -> dict[str, Any]:
    """submitit's parameters (sbatch options) for `job`."""
    resources = job.resources
    parameters: dict[str, Any] = {
        "job_name": f"scratchdet:{job.name}",
        "nodes": resources.nodes,
        "ntasks_per_node": 1,  # one task per node starts that node's processes (as torchrun does)
        "cpus_per_task": (resources.cpus or 1) * resources.processes_per_node,
        "signal_delay_s": settings.signal_delay,
    }
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus_per_node
    parameters["time"] = settings.time  # None: no --time in a dry run's script (submitting needs one)
    if settings.partition:
        parameters["partition"] = settings.partition
    if settings.account:
        parameters["account"] = settings.account
    extra: dict[str, Any] = {"kill-on-invalid-dep": "yes", **settings.sbatch}  # a job whose need failed ends
    if dependency:
        extra["dependency"] = dependency
    parameters["additional_parameters"] = extra
    return parameters


def make_executor(study_dir: Path, job: SlurmJob, settings: SlurmSettings, dependency: str) -> submitit.SlurmExecutor:
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


SIGNAL_EARLY_SECONDS = 60  # Slurm may send the time-limit warning up to this much earlier than asked
SIGNAL_START_MARGIN = 30  # and a job signalled before submitit has set its handler (it starts Python) dies of it


def signal_problem(settings: SlurmSettings) -> str:
    """Why `signal_delay` does not fit the time limit (empty when it does)."""
    if settings.time is None:
        return ""
    longest = settings.time * 60 - SIGNAL_EARLY_SECONDS - SIGNAL_START_MARGIN
    if settings.signal_delay <= longest:
        return ""
    return (
        f"--signal-delay {settings.signal_delay} s does not fit --time {settings.time} min: Slurm may send the "
        f"warning up to {SIGNAL_EARLY_SECONDS} s early, and a job warned in its first seconds dies of it; give at "
        f"most {longest} s, or a longer time limit"
        if longest > 0
        else f"--time {settings.time} min is too short for the time-limit warning: give 2 minutes or more"
    )


def task_of(job: SlurmJob, study_dir: Path) -> Task:
    return Task(
        name=job.name,
        command=job.command,
        run_dir=str(job.run_dir),
        config_file=str(job.config_file),
        processes_per_node=job.resources.processes_per_node,
        nodes=job.resources.nodes,
        outcome_file=str(_outcome_path(study_dir, job.name)),
        stop_at=job.stop_at,
        fork_from=str(job.fork_from) if job.fork_from is not None else None,
        fork_iteration=job.fork_iteration,
    )


def _dependency(job: SlurmJob, ids: dict[str, str], jobs: dict[str, SlurmJob]) -> str:
    waiting = [ids[n] for n in job.needs if not jobs[n].done()]
    return f"afterok:{':'.join(waiting)}" if waiting else ""


def submit_missing(
    jobs: dict[str, SlurmJob], study_dir: Path, settings: SlurmSettings, retry_failed: bool
) -> dict[str, JobState]:
    """Submit every job that should run and is not queued or running; returns every job's state (with the ids of
    those just submitted)."""
    record = read_record(study_dir)
    states = job_states(jobs, study_dir, record, retry_failed)
    ids = {name: state.job_id for name, state in states.items() if state.live}
    for name, job in jobs.items():  # in dependency order: the ids of what a job needs are known
        if not states[name].submit:
            continue
        dependency = _dependency(job, ids, jobs)
        executor = make_executor(study_dir, job, settings, dependency)
        try:
            submitted = executor.submit(NodeTask(task_of(job, study_dir)))
        except submitit.core.utils.FailedJobError as exc:  # sbatch refused it; what was submitted is recorded
            raise ScratchdetError(
                f"sbatch refused {name}: {str(exc).strip() or 'no reason given'}. Fix the Slurm settings (flags or "
                "the spec's slurm: and resources:) and run the study again"
            ) from None
        ids[name] = str(submitted.job_id)
        again = "; submitted again" if states[name].job_id else "; submitted"
        states[name] = JobState(ids[name], states[name].label + again, live=True)
        record[name] = {"job_id": ids[name], "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_record(study_dir, record)  # after each: a submission cut short still knows what it submitted
        log.info(f"submitted {name} as Slurm job {ids[name]}" + (f" ({dependency})" if dependency else ""))
    return states


def job_script(job: SlurmJob, study_dir: Path, settings: SlurmSettings, jobs: dict[str, SlurmJob]) -> str:
    """The sbatch script `submit_missing` would submit for `job` (job ids of its needs shown as <...>), written
    by submitit's own (private) function, without Slurm: a plan can be looked at anywhere."""
    placeholders = {n: f"<{n}>" for n in jobs}
    folder = study_dir / SLURM_DIR / LOGS
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"  # as submitit
    parameters = slurm_parameters(job, settings, _dependency(job, placeholders, jobs))
    return str(submitit_slurm._make_sbatch_string(command=command, folder=folder, **parameters))


def wait_for(
    jobs: dict[str, SlurmJob],
    study_dir: Path,
    poll_seconds: float,
    on_change: Callable[[dict[str, JobState]], None],
) -> dict[str, JobState]:
    """Poll Slurm until no job of the study is queued or running; `on_change` sees each new set of states."""
    shown = ""
    while True:
        states = job_states(jobs, study_dir, read_record(study_dir), retry_failed=False)
        text = "\n".join(f"{n}: {s.label.split(' (iteration')[0]}" for n, s in states.items())
        if text != shown:
            on_change(states)
            shown = text
        if not any(state.live for state in states.values()):
            return states
        time.sleep(poll_seconds)


def slurm_plan(
    jobs: dict[str, SlurmJob], study_dir: Path, settings: SlurmSettings, estimates: dict[str, float], source: str
) -> str:
    """The dry run's Slurm part: each job's resources, iterations and time, its sbatch script, and the GPU-hours
    of the plan. `estimates`: each run's seconds from its start (`runner.estimated_seconds`), shared by its parts."""
    seconds = {name: _job_seconds(job, jobs, estimates) for name, job in jobs.items()}
    rows = ["", "Slurm jobs (in submission order; a job waits for those it needs with afterok):"]
    for name, job in jobs.items():
        needs = f"; after {', '.join(job.needs)}" if job.needs else ""
        took = f", est. {format_duration(seconds[name])}" if estimates else ""
        rows.append(f"  {name}: iterations {job.start:,}-{job.end:,}{took}; {job.resources.describe()}{needs}")
    rows.append("")
    if estimates:
        gpu_hours = sum(seconds[n] * job.resources.gpus for n, job in jobs.items()) / 3600
        node_hours = sum(seconds[n] * job.resources.nodes for n, job in jobs.items()) / 3600
        rows.append(
            f"cost of the plan: {gpu_hours:,.2f} GPU-hours, {node_hours:,.2f} node-hours ({source}; evaluation and "
            "start-up not included)"
        )
        if settings.time is not None:
            limit = settings.time * 60
            requeued = {n: int(s // limit) for n, s in seconds.items() if s > limit}
            for name, count in requeued.items():
                more = f" (more than --max-requeues {settings.max_requeues}: raise it)"
                rows.append(
                    f"{name} outlasts the time limit ({settings.time} min): requeued about {count} time(s)"
                    + (more if count > settings.max_requeues else "")
                )
    else:
        rows.append("cost of the plan: give --seconds-per-iteration (as measured on the cluster) for GPU-hours")
    if settings.time is None:
        rows.append("no time limit given: submitting needs --time MINUTES (or slurm.time in the spec)")
    elif signal_problem(settings):
        rows.append(f"submitting would be refused: {signal_problem(settings)}")
    for job in jobs.values():
        runs = shlex.join(training_command(task_of(job, study_dir), 0, ["<first node>"], "<job id>"))
        rows += ["", f"# ---- {job.name}: runs `{runs}` on its node(s)", job_script(job, study_dir, settings, jobs)]
    return "\n".join(rows)


def _job_seconds(job: SlurmJob, jobs: dict[str, SlurmJob], estimates: dict[str, float]) -> float:
    """A job's share of its run's estimated seconds (a run's parts take theirs in proportion to iterations)."""
    run = job.name.split("@")[0]
    if run not in estimates:
        return 0.0
    whole = jobs[run]
    first = min(j.start for j in jobs.values() if j.name.split("@")[0] == run)
    return estimates[run] * (job.end - job.start) / max(1, whole.end - first)


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
