"""Run the scratchdet CLI with a fault planted at a named point; used by the fault tests.

    python tests/engine/kill_at.py POINT N scratchdet-arguments...

The process SIGKILLs itself the N-th time it reaches POINT: a real SIGKILL (no handler, no cleanup, no flush),
placed where an outside signal would land only by luck. `disk-full-*` make one kind of write fail as on a full
disk (ENOSPC). `hang` stops the process there instead (SIGSTOP: a
peer that no longer answers). `disk-full` instead makes the N-th checkpoint write fail
the way a full disk does (ENOSPC).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_nth_call(owner: Any, name: str, n: int, fault: Callable[..., Any]) -> None:
    """Replace `owner.name` so that its n-th call runs `fault(original, *args)` instead."""
    original = getattr(owner, name)
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            return fault(original, *args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _half_written_checkpoint(original: Callable[..., Any], path: Path, write: Callable[[Any], Any]) -> None:
    def write_half_then_die(file: Any) -> None:
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        die()

    original(path, write_half_then_die)


def _half_written_record(original: Callable[..., Any], writer: Any, record: dict[str, Any]) -> None:
    import json

    line = json.dumps(record) + "\n"
    with open(writer.path, "a", encoding="utf-8") as file:
        file.write(line[: len(line) // 2])
        file.flush()
        os.fsync(file.fileno())
    die()


def _full_disk(original: Callable[..., Any], path: Path, write: Callable[[Any], Any]) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_space(file_name: str | None) -> Callable[..., Any]:
    """A fault raising what a write to a full disk raises (a file object's write names no file: None)."""

    def fault(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file_name)

    return fault


def full_disk_writing(owner: Any, name: str, file_name: str) -> None:
    """Replace `owner.name(path, ...)` so that writing `file_name` fails as on a full disk."""
    original = getattr(owner, name)

    def wrapper(path: Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == file_name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, *args, **kwargs)

    setattr(owner, name, wrapper)


def die_before_writing(owner: Any, name: str, file_name: str) -> None:
    """Replace `owner.name(path, value)` so that it kills the process instead of writing `file_name`."""
    original = getattr(owner, name)

    def wrapper(path: Path, value: Any) -> None:
        if Path(path).name == file_name:
            die()
        original(path, value)

    setattr(owner, name, wrapper)


def _terminated(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    os.kill(os.getpid(), signal.SIGTERM)  # handled before the next bytecode: within this step
    return original(*args, **kwargs)


def plant(point: str, n: int) -> None:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from scratchdet.engine import checkpoint, detection, hooks, rundir
    from scratchdet.evaluation import coco

    killed = lambda original, *args, **kwargs: die()  # noqa: E731
    points: dict[str, Callable[[], None]] = {
        # after backward, before the weights change
        "step": lambda: on_nth_call(torch.optim.SGD, "step", n, killed),
        # the same point, but the process gets SIGTERM (a time limit, `scancel`): it finishes the step first
        "sigterm": lambda: on_nth_call(torch.optim.SGD, "step", n, _terminated),
        # the same point, but the process stops (SIGSTOP) instead: alive, and answering nobody
        "hang": lambda: on_nth_call(torch.optim.SGD, "step", n, lambda *a, **k: os.kill(os.getpid(), signal.SIGSTOP)),
        # half of the checkpoint's bytes are in its temporary file
        "checkpoint-write": lambda: on_nth_call(checkpoint, "atomic_write", n, _half_written_checkpoint),
        # the checkpoint is in place, the `last_checkpoint` pointer still names the previous one
        "checkpoint-pointer": lambda: on_nth_call(checkpoint, "atomic_write_text", n, killed),
        # half a line of metrics.jsonl is written
        "metrics-write": lambda: on_nth_call(hooks.MetricsWriter, "write", n, _half_written_record),
        # an evaluation has started
        "evaluation": lambda: on_nth_call(detection, "run_inference", n, killed),
        # training, the last checkpoint and the final evaluation are done; summary.json is not written yet
        "summary": lambda: die_before_writing(rundir, "atomic_write_text", "summary.json"),
        "disk-full": lambda: on_nth_call(checkpoint, "atomic_write", n, _full_disk),
        # a full disk at every other kind of write a run makes (the n-th such write)
        # (as a real write does, these name no file: the run must say which one it was writing)
        "disk-full-metrics": lambda: on_nth_call(hooks, "append_line", n, _no_space(None)),
        "disk-full-log": lambda: on_nth_call(rundir._LogFile, "flush", n, _no_space(None)),
        "disk-full-tensorboard": lambda: on_nth_call(SummaryWriter, "add_scalar", n, _no_space(None)),
        "disk-full-detections": lambda: full_disk_writing(coco, "atomic_write_text", "detections.json"),
        "disk-full-summary": lambda: full_disk_writing(rundir, "atomic_write_text", "summary.json"),
    }
    points[point]()


if __name__ == "__main__":
    plant(sys.argv[1], int(sys.argv[2]))
    from scratchdet.cli import main

    raise SystemExit(main(sys.argv[3:]))
