"""What runs a study's jobs: the `Executor` protocol, and the registry `scratchdet study --executor` chooses from.

`run_study` (study/runner.py) plans the job graph (study/jobs.py), then hands it to an executor: `check` refuses
what the executor cannot run, before anything is written; `describe` adds its part to a dry run; `submit` starts
what is neither done nor running; `wait` returns every job's state once none runs (None from an executor whose
jobs go on without this process, unless asked to follow them). The run directories stay the one record of what is
done, so any executor can continue a study another started, once the other's jobs have ended (`live_jobs`).

A new executor is a module with a class of this shape, and one line in `EXECUTORS`; its command-line options
(`options`, given to `from_options` by their names) appear under their own heading in `scratchdet study --help`,
and are refused with another executor.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only for the protocol's annotations: the CLI reads the registry before torch may load
    from scratchdet.study.jobs import JobGraph, JobState
    from scratchdet.study.spec import StudyPlan


class Option:
    """A command-line option of an executor: argparse's flag and keyword arguments. It has no default (None, or
    False for a switch): the executor applies its own, and an option is given when it is set."""

    def __init__(self, flag: str, **kwargs: Any) -> None:
        self.flag, self.kwargs = flag, kwargs

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class Executor(Protocol):
    retry_hint: str  # what to do about jobs that did not finish

    @staticmethod
    def live_jobs(study_dir: Path) -> list[str]:
        """The study's jobs this executor still holds (queued or running), as NAME (ID)."""
        ...

    def check(self, plan: StudyPlan, graph: JobGraph, study_dir: Path) -> None: ...

    def describe(self, graph: JobGraph, study_dir: Path, estimates: dict[str, float], source: str) -> str: ...

    def submit(self, graph: JobGraph, study_dir: Path) -> None: ...

    def wait(self, graph: JobGraph, study_dir: Path) -> dict[str, JobState] | None: ...


@dataclass(frozen=True)
class Registration:
    name: str
    target: str  # "module:class", imported when used: an executor's dependencies load only where it runs
    help: str  # one line for --help
    options: tuple[Option, ...] = ()
    heading: str = ""  # of its options in --help

    def load(self) -> Any:
        """The executor's class: `from_options(**given)` makes one from those of `options` that were given (by
        their `dest`), and its instances are `Executor`s."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


SLURM_HEADING = (
    "Submits what is neither finished, queued nor running, with dependencies, and returns; run the same command "
    "again to see every job's state and submit what is missing; `scratchdet report DIR` any time."
)

EXECUTORS = {
    entry.name: entry
    for entry in (
        Registration(
            "local",
            "scratchdet.study.local:LocalExecutor",
            "jobs as processes on this machine",
            (Option("--jobs", type=int, metavar="N", help="jobs trained at once on this machine (default: 1)"),),
        ),
        Registration(
            "slurm",
            "scratchdet.study.slurm:SlurmExecutor",
            "jobs on the cluster, each an sbatch job submitted with submitit (over the spec's `slurm:`)",
            (
                Option("--partition", help="Slurm partition"),
                Option("--account", help="Slurm account"),
                Option(
                    "--time",
                    type=int,
                    metavar="MINUTES",
                    help="time limit of a job; one that reaches it checkpoints and requeues",
                ),
                Option(
                    "--sbatch",
                    action="append",
                    metavar="KEY=VALUE",
                    help="another sbatch option, e.g. --sbatch qos=high --sbatch constraint=volta32gb",
                ),
                Option(
                    "--signal-delay",
                    type=int,
                    metavar="SECONDS",
                    help="how long before the time limit a job is told to checkpoint (default: 90)",
                ),
                Option(
                    "--max-requeues", type=int, metavar="N", help="requeues after reaching the time limit (default: 3)"
                ),
                Option("--wait", action="store_true", help="stay until every job has ended, then write the report"),
                Option("--poll", type=float, metavar="SECONDS", help="how often --wait asks Slurm (default: 30)"),
                Option(
                    "--retry-failed",
                    action="store_true",
                    help="submit again the jobs that failed for a reason of their own",
                ),
            ),
            SLURM_HEADING,
        ),
    )
}
