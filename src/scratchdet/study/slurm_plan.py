"""What each job of a study is submitted to Slurm as: the settings (the spec's `slurm:` under the command line's),
its sbatch parameters and script, and the dry run's plan with its GPU-hours (study/slurm.py submits).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from submitit.slurm import slurm as submitit_slurm

from scratchdet.engine.hooks import format_duration
from scratchdet.study.jobs import JobGraph, StudyJob
from scratchdet.study.slurm_node import task_of, training_command

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
LOGS = "logs"
OUTCOMES = "outcomes"


def outcome_path(study_dir: Path, name: str) -> Path:
    return study_dir / SLURM_DIR / OUTCOMES / f"{name.replace('/', '__')}.json"


class SlurmSettings(BaseModel):
    """The spec's `slurm:` section (the flags of `scratchdet study --executor slurm` override it)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    time: int | None = Field(None, ge=1, description="minutes per job; one that reaches it checkpoints and requeues")
    sbatch: dict[str, str] = {}  # more sbatch options, e.g. {qos: high, constraint: volta32gb}
    signal_delay: int = Field(90, ge=1, description="seconds before the time limit when a job is told to stop")
    max_requeues: int = Field(3, ge=0, description="requeues after reaching the time limit (pre-emptions are free)")


def slurm_parameters(job: StudyJob, settings: SlurmSettings, dependency: str) -> dict[str, Any]:
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


def afterok(job: StudyJob, ids: dict[str, str], jobs: JobGraph) -> str:
    waiting = [ids[n] for n in job.needs if not jobs[n].done()]
    return f"afterok:{':'.join(waiting)}" if waiting else ""


def job_script(job: StudyJob, study_dir: Path, settings: SlurmSettings, jobs: JobGraph) -> str:
    """The sbatch script `submit_missing` would submit for `job` (job ids of its needs shown as <...>), written
    by submitit's own (private) function, without Slurm: a plan can be looked at anywhere."""
    placeholders = {n: f"<{n}>" for n in jobs}
    folder = study_dir / SLURM_DIR / LOGS
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"  # as submitit
    parameters = slurm_parameters(job, settings, afterok(job, placeholders, jobs))
    return str(submitit_slurm._make_sbatch_string(command=command, folder=folder, **parameters))


def slurm_plan(
    jobs: JobGraph, study_dir: Path, settings: SlurmSettings, estimates: dict[str, float], source: str
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
        runs = shlex.join(
            training_command(task_of(job, outcome_path(study_dir, job.name)), 0, ["<first node>"], "<job id>")
        )
        rows += ["", f"# ---- {job.name}: runs `{runs}` on its node(s)", job_script(job, study_dir, settings, jobs)]
    return "\n".join(rows)


def _job_seconds(job: StudyJob, jobs: JobGraph, estimates: dict[str, float]) -> float:
    """A job's share of its run's estimated seconds (a run's parts take theirs in proportion to iterations)."""
    run = job.name.split("@")[0]
    if run not in estimates:
        return 0.0
    whole = jobs[run]
    first = min(j.start for j in jobs.values() if j.name.split("@")[0] == run)
    return estimates[run] * (job.end - job.start) / max(1, whole.end - first)
