"""Several processes, one run: torchrun's environment, the few collectives the engine needs, a local launcher.

A run is distributed when torchrun started it (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)
with WORLD_SIZE > 1: `init_from_environment` then joins the process group — NCCL on CUDA, gloo on CPU — and every
function below works on it. In a single process they all degrade to the obvious no-op, so the engine has one code
path. `scratchdet train --nproc N` runs torchrun itself (`launch_local`).

Only rank 0 writes files. A peer that dies closes its connections, so the others fail at their next collective;
a peer that hangs is given up on after SCRATCHDET_DIST_TIMEOUT seconds (default 1800). Either way the error says
how to resume.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from scratchdet.errors import ScratchdetError
from scratchdet.modeling.norm import use_torch_sync_batch_norm

Result = TypeVar("Result")
TIMEOUT_ENV = "SCRATCHDET_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800
log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def check_batch_split(images_per_batch: int, processes: int) -> None:
    """Every process takes an equal share of each global batch: refuse a split that leaves a remainder."""
    if images_per_batch % processes:
        raise ScratchdetError(
            f"{images_per_batch} images per batch cannot be shared by {processes} processes; choose a number of "
            f"processes (--nproc) among the divisors of {images_per_batch} or change the batch size"
        )


def timeout_seconds() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS))
    if not value.isdigit() or int(value) <= 0:
        raise ScratchdetError(f"{TIMEOUT_ENV}={value!r} is not a positive number of seconds")
    return int(value)


def init_from_environment() -> torch.device:
    """Join torchrun's process group when there is one; the device this process computes on."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if size > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_seconds()))
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def shutdown(*, together: bool) -> None:
    """Leave the process group. `together` (every process ends the same way, a finish or a pause): wait for the
    others first, so that no process tears down its connections while a peer still uses them (gloo then aborts
    the peer, "terminate called without an active exception"). After an error a peer may be gone: leave at once.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together and is_distributed():
        try:
            dist.barrier()
        except RuntimeError as exc:  # a peer that failed after all: nothing left to wait for
            log.debug(f"barrier before leaving the process group failed: {exc}")
    dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed; `model` itself otherwise.

    On CUDA, SyncBN layers that can never see an empty global batch use torch's fused implementation.
    """
    if not is_distributed():
        return model
    if device.type == "cuda":
        swapped = use_torch_sync_batch_norm(model)
        if swapped:
            log.info(f"syncbn: {swapped} layers use torch.nn.SyncBatchNorm (the mask head keeps scratchdet's)")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (its state dict has no `module.` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (a copy; `values` is left alone)."""
    if not is_distributed():
        return values.clone()
    # NCCL reduces CUDA tensors only.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    total = values.to(device, copy=True)
    dist.all_reduce(total)
    return total.to(values.device)


def gather_to_main(value: Any) -> list[Any] | None:
    """Every process's `value`, in rank order, on rank 0; None elsewhere."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object(value, gathered if is_main() else None, dst=0)
    return gathered if is_main() else None


def all_gather(value: Any) -> list[Any]:
    """Every process's `value`, in rank order, on every process."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every process."""
    if not is_distributed():
        return value
    holder = [value if is_main() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_main(function: Callable[[], Result]) -> Result:
    """Run `function` on rank 0 only; its result, or its ScratchdetError, reaches every process.

    For decisions that touch the file system (create the run directory, read what a finished run left): the
    other ranks must neither race rank 0 nor wait forever for a rank 0 that stopped with an error.
    """
    outcome: tuple[Any, str | None] = (None, None)
    if is_main():
        try:
            outcome = (function(), None)
        except ScratchdetError as exc:
            outcome = (None, str(exc))
    result, error = broadcast_from_main(outcome)
    if error is not None:
        raise ScratchdetError(error)
    return result


PEER_FAILURE_MARKERS = ("gloo", "nccl", "connection", "peer", "timed out", "timeout")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process died or hung (not a bug of our own).

    Gloo reports a dead peer as a plain RuntimeError ("Connection reset by peer"), so its text is looked at.
    """
    if not is_distributed():
        return False
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in PEER_FAILURE_MARKERS)


def peer_failure(exc: BaseException) -> ScratchdetError:
    """The error a process raises when a collective failed because another process stopped or hung."""
    return ScratchdetError(
        f"rank {rank()} of {world_size()}: another process of this run stopped or stopped answering "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Its own output says why; "
        "continue from the last checkpoint with `--resume RUN_DIR`"
    )


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (to hand the rest to the launched processes)."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == option:
            skip = True
        elif not argument.startswith(option + "="):
            kept.append(argument)
    return kept


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `scratchdet ARGV` in `nproc` local processes, as `torchrun --standalone` would; their exit status.

    Threads are split between the processes unless OMP_NUM_THREADS is set. When a process fails, torchrun's
    agent stops the others; each process has already printed its own error, so the launcher only sums up.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ScratchdetError(f"--nproc {nproc}: give a number of processes of at least 1")
    if "WORLD_SIZE" in os.environ:
        raise ScratchdetError("--nproc inside a torchrun launch: give the process count to torchrun only")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"scratchdet-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its traceback repeats ours
    log.info(
        f"launching {nproc} processes (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}): scratchdet {' '.join(argv)}"
    )
    try:
        elastic_launch(config, sys.executable)("-m", "scratchdet", *argv)
    except SignalException as exc:  # torchrun's agent passed the signal on; each process said how it stopped
        print(f"the launcher got signal {exc.sigval.name}: {_how_to_continue(argv, nproc)}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # a signal: as a shell says
        print(
            f"error: process {failed_rank} of {nproc} failed first (exit status {failure.exitcode}); "
            f"{_how_to_continue(argv, nproc)}",
            file=sys.stderr,
        )
        return code
    return 0


def _how_to_continue(argv: Sequence[str], nproc: int) -> str:
    """What to run next after a failed launch: resume the run (its checkpoints are kept), or run it again."""
    command = argv[0] if argv else ""
    run_dir = None
    for i, argument in enumerate(argv):
        if argument in ("--out", "--resume") and i + 1 < len(argv):
            run_dir = argv[i + 1]
        elif argument.startswith(("--out=", "--resume=")):
            run_dir = argument.split("=", 1)[1]
    if command in ("train", "pretrain") and run_dir:
        resume = f"scratchdet {command} --resume {run_dir} --nproc {nproc}"
        return f"the run keeps its last checkpoint: continue it with `{resume}`"
    return "nothing was saved: run the same command again"


def sum_over_processes(values: Sequence[float]) -> list[float]:
    """Sum of a few numbers over all processes, in float64 (exact for counts below 2**53)."""
    return all_sum(torch.tensor(list(values), dtype=torch.float64)).tolist()
