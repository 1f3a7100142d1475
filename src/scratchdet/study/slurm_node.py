"""What a Slurm job runs on its node(s): the training of one study job, stopped with a checkpoint when Slurm asks.

On the node, a job runs `scratchdet train|pretrain --resume RUN_DIR` (the run directory is prepared there: its
config, or the fork) as its own process(es): `--nproc` on one node, torchrun with a rendezvous at the first node of
the allocation on several. `signal_delay` seconds before the time limit Slurm signals the job; submitit calls
`NodeTask.checkpoint`, which sends SIGTERM to the training, which saves a checkpoint at the end of its step and
exits, and submitit requeues the job, which continues from that checkpoint exactly as `--resume` does (pre-emption
is the same path). How the job's last attempt ended is written to its outcome file for the login node to read.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from scratchdet.config import load_config
from scratchdet.engine import rundir
from scratchdet.errors import PAUSED_EXIT_CODE, ScratchdetError
from scratchdet.storage import atomic_write_text
from scratchdet.study.jobs import StudyJob

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 60  # how long the training may take to reach the end of its step and save, once told to stop


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
        state = "done" if code == 0 else "stopped" if code == PAUSED_EXIT_CODE else "failed"
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


def task_of(job: StudyJob, outcome_file: Path) -> Task:
    return Task(
        name=job.name,
        command=job.command,
        run_dir=str(job.run_dir),
        config_file=str(job.config_file),
        processes_per_node=job.resources.processes_per_node,
        nodes=job.resources.nodes,
        outcome_file=str(outcome_file),
        stop_at=job.stop_at,
        fork_from=str(job.fork_from) if job.fork_from is not None else None,
        fork_iteration=job.fork_iteration,
    )
