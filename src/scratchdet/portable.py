"""Portable CPU arithmetic: a CPU run whose every bit is the same on any x86-64 machine with AVX2 and FMA.

A float sum's result depends on the order of its terms, and on a CPU that order depends on the machine. PyTorch
picks its kernels for the widest vector unit it finds (AVX-512, AVX2, or plain code), oneDNN picks convolution
kernels by instruction set and cache sizes, MKL picks its matrix products by instruction set and vendor, and each
splits work by the number of threads. A training run amplifies the last-bit differences of a few hundred steps
into different detections, so the same seed gives AP that differs by a point or more between two CPUs.

`enable` fixes each choice before the libraries make it:
- PyTorch's own kernels: the AVX2 ones (`ATEN_CPU_CAPABILITY=avx2`), what every x86-64 CPU of the last decade runs;
- matrix products: MKL's COMPATIBLE branch (`MKL_CBWR`), the one MKL documents as giving the same results on
  Intel and other vendors' CPUs (its AVX2 branch falls back to automatic dispatch on AMD's);
- convolutions: PyTorch's own im2col + matrix product instead of oneDNN, which promises no reproducibility across
  machines, and no NNPACK;
- one thread, so no sum is split by the number of cores.
It costs speed (oneDNN's convolutions are the largest part): `bench/portable.py` measures how much.

The settings travel in the environment, so every process a run starts (data workers, `--nproc` ranks, a study's
jobs) inherits them; `SCRATCHDET_PORTABLE=1` is how a process learns it was asked for.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping
from pathlib import Path

from scratchdet.errors import ScratchdetError

SWITCH = "SCRATCHDET_PORTABLE"
THREADS = 1
ENVIRONMENT = {
    SWITCH: "1",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",  # MKL's reproducibility conditions: a thread count it may not change
    "OMP_DYNAMIC": "FALSE",
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}
_MKL_CBWR_BRANCH, _MKL_CBWR_COMPATIBLE = 1, 3  # mkl_cbwr_get's option and the value it returns for COMPATIBLE


def requested(environment: Mapping[str, str]) -> bool:
    return environment.get(SWITCH, "") not in ("", "0")


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the portable settings: the environment of a process that should compute portably."""
    return {**base, **ENVIRONMENT}


def unsupported(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Why this machine cannot run portably, or None. PyTorch does not check the kernels it is told to use, so an
    AVX2 kernel on a CPU without AVX2 would end the process with an illegal instruction instead."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"portable arithmetic needs an x86-64 CPU; this one is {platform.machine() or 'unknown'}"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return f"cannot read {cpuinfo} to check that this CPU has AVX2 and FMA"
    missing = [flag for flag in ("avx2", "fma") if flag not in flags]
    if missing:
        return f"portable arithmetic uses AVX2 kernels; this CPU lacks {' and '.join(missing)}"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as Linux lists them, or None where the file cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def enable() -> None:
    """Compute portably in this process and every process it starts. Call it before torch is first used: PyTorch
    and MKL read their settings once, at their first operation, and `check` refuses a process where that was too
    late."""
    problem = unsupported()
    if problem is not None:
        raise ScratchdetError(f"{problem}. Run without --portable (and without {SWITCH} in the environment)")
    os.environ.update(ENVIRONMENT)
    import torch

    torch.set_num_threads(THREADS)
    torch.backends.mkldnn.set_flags(False)
    torch.backends.nnpack.set_flags(False)
    check()


def check() -> None:
    """Raise unless this process computes with the portable settings."""
    import torch

    found = []
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        found.append(f"PyTorch's kernels are {torch.backends.cpu.get_cpu_capability()}")
    branch = _mkl_branch()
    if branch is not None and branch != _MKL_CBWR_COMPATIBLE:
        found.append(f"MKL's branch is {branch}, not COMPATIBLE ({_MKL_CBWR_COMPATIBLE})")
    if torch.get_num_threads() != THREADS:
        found.append(f"{torch.get_num_threads()} threads")
    if torch.backends.mkldnn.enabled:
        found.append("oneDNN is on")
    if found:
        raise ScratchdetError(
            f"portable arithmetic did not take effect ({'; '.join(found)}): the libraries chose before it was "
            f"asked for. Start the process with {SWITCH}=1 in its environment (or `scratchdet --portable ...`)"
        )


def description() -> str:
    """What this process computes with, for a run's record of its machine."""
    import torch

    kind = "portable" if requested(os.environ) else "native"
    return f"{kind} ({torch.backends.cpu.get_cpu_capability()} kernels)"


def _mkl_branch() -> int | None:
    """MKL's reproducibility branch, or None where PyTorch has no MKL or does not expose the call."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = library.mkl_serv_cbwr_get  # MKL's own mkl_cbwr_get, under the name libtorch_cpu exports
    except (OSError, AttributeError):
        return None
    return int(get(_MKL_CBWR_BRANCH))
