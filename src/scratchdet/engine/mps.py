"""Several training processes on one GPU: a private CUDA MPS server for them.

Processes that share a GPU without MPS get it in turns (time-slicing): the kernels of two processes never run at
the same time, however little of the GPU each kernel fills, so several small runs train no faster together than one
alone. Under MPS the kernels of all client processes run side by side (`tools/gpu_demo_calibration.py` measures
both on a device; the README's GPU demo section gives the numbers).

`mps_server` starts an MPS control daemon whose pipe and log directories are private to this run (a fresh folder
under the system's temporary directory: the pipe's socket path must stay short), so that it serves only the
processes given its environment and nothing else on the machine; it stops the daemon on exit. Where MPS is already
in use (CUDA_MPS_PIPE_DIRECTORY set, or a system daemon's pipe in /tmp/nvidia-mps), the processes join it as they
are, and where the control program is missing or fails to start, the caller is told so (None).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
CONTROL = "nvidia-cuda-mps-control"
SYSTEM_PIPE = Path("/tmp/nvidia-mps/control")  # where a daemon started without a pipe directory listens
TIMEOUT_SECONDS = 30


def available() -> bool:
    """An MPS server is running here, or one can be started."""
    return bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY")) or SYSTEM_PIPE.exists() or shutil.which(CONTROL) is not None


@contextmanager
def mps_server() -> Iterator[dict[str, str] | None]:
    """Yields the environment that makes a CUDA process a client of an MPS server ({} when one is already in use),
    or None when no server could be started (processes then time-share the GPU)."""
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or SYSTEM_PIPE.exists():
        log.info("CUDA MPS is already in use here: the processes sharing the GPU join it")
        yield {}
        return
    control = shutil.which(CONTROL)
    if control is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="scratchdet-mps-"))
    environment = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in environment.values():
        Path(path).mkdir()
    started = _control(control, environment, ["-d"], folder / "control.txt")
    if started is not None:
        log.warning(f"{CONTROL} -d failed ({started}); the processes will time-share the GPU")
        shutil.rmtree(folder, ignore_errors=True)
        yield None
        return
    log.info(f"started a private CUDA MPS server ({folder}) for the processes sharing the GPU")
    try:
        yield environment
    finally:
        stopped = _control(control, environment, [], folder / "control.txt", stdin="quit\n")
        if stopped is not None:
            log.warning(f"stopping the CUDA MPS server failed ({stopped}); its logs are in {folder}/log")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _control(
    control: str, environment: dict[str, str], arguments: list[str], output: Path, stdin: str = ""
) -> str | None:
    """Run the MPS control program; None on success, else what went wrong. Its output goes to a file, not a pipe:
    the daemon it starts may keep a pipe open long after the program itself has returned."""
    try:
        with open(output, "a") as sink:
            result = subprocess.run(
                [control, *arguments],
                input=stdin,
                env={**os.environ, **environment},
                text=True,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=TIMEOUT_SECONDS,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return f"exit {result.returncode}: {output.read_text().strip()[-300:]}"
    return None
