"""What each job of a study runs on: processes (the torch.distributed world size), nodes, GPUs, CPUs.

    resources:                     # in the study spec; every key optional
      gpus: 8                      # per job, in all (spread evenly over its nodes); one process per GPU
      nodes: 1
      processes: 8                 # default: the GPUs, or 1 without GPUs
      cpus: 10                     # per process (Slurm's --cpus-per-task is this times the processes per node)
      jobs:                        # per job, by name pattern (fnmatch, first match wins): pretrain/*, arms/*
        "arms/*_6x_*": {gpus: 16, nodes: 2}

Both executors run a job with several processes as `--nproc` / torchrun do (the global batch is shared, so the
process count is part of what a run is: two runs with different counts are equivalent, not bitwise equal); the
local one runs each job on this machine, so it refuses nodes > 1. Flags of `scratchdet study` (`--gpus-per-arm`,
`--nodes-per-arm`, `--procs-per-arm`, `--cpus-per-proc`) override the spec's defaults, not its per-job patterns.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from scratchdet.errors import ScratchdetError


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpus: int | None = Field(None, ge=0)
    nodes: int | None = Field(None, ge=1)
    processes: int | None = Field(None, ge=1)
    cpus: int | None = Field(None, ge=1)

    def merged(self, other: Resources) -> Resources:
        """These settings with `other`'s given ones on top."""
        return self.model_copy(update=other.model_dump(exclude_none=True))


class ResourceSpec(Resources):
    jobs: dict[str, Resources] = {}


@dataclass(frozen=True)
class JobResources:
    """One job's resources, resolved and checked."""

    processes: int
    nodes: int
    gpus: int
    cpus: int | None

    @property
    def processes_per_node(self) -> int:
        return self.processes // self.nodes

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    def describe(self) -> str:
        where = f"{self.nodes} nodes" if self.nodes > 1 else "1 node"
        gpus = f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else ""
        return f"{self.processes} process{'es' if self.processes != 1 else ''} on {where}{gpus}"


def resources_for(job: str, spec: ResourceSpec, flags: Resources, images_per_batch: int) -> JobResources:
    """The resources of `job` (e.g. arms/scratch_gn_1x_seed0): defaults, the spec's, the flags', then the first
    of the spec's patterns that matches; checked for consistency and against the job's batch size."""
    settings = Resources(**spec.model_dump(exclude={"jobs"})).merged(flags)
    for pattern, override in spec.jobs.items():
        if fnmatch.fnmatchcase(job, pattern):
            settings = settings.merged(override)
            break
    gpus, nodes = settings.gpus or 0, settings.nodes or 1
    processes = settings.processes or gpus or 1
    where = f"resources of {job}"
    if gpus and processes != gpus:
        raise ScratchdetError(f"{where}: {processes} processes for {gpus} GPUs; a job runs one process per GPU")
    if processes % nodes or gpus % nodes:
        raise ScratchdetError(
            f"{where}: {processes} processes and {gpus} GPUs cannot be spread evenly over {nodes} nodes; give a "
            "multiple of the node count"
        )
    if images_per_batch % processes:
        raise ScratchdetError(
            f"{where}: {images_per_batch} images per batch cannot be shared by {processes} processes; choose a "
            f"divisor of {images_per_batch}"
        )
    return JobResources(processes, nodes, gpus, settings.cpus)
