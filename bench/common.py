"""What every benchmark shares: the torchvision reference training step, timing, memory, tables and JSON.

Benchmarks compare scratchdet against a baseline measured in the same process and the same run, alternating the
two, so that a machine's speed (or another process's load) cancels in the ratio. They are not tests: they print
a table, write a JSON file, and assert nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import statistics
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing


def reference_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: list[torch.Tensor], targets: list[dict[str, Any]],
    device: torch.device, bf16: bool = False,
) -> float:  # fmt: skip
    """One iteration of torchvision's reference detection loop (references/detection/engine.py), minus logging,
    with torchvision's own RPN and RoI heads (per-image matching, sampling and targets) in place of ours.

    Move the batch, forward under autocast when asked, sum the losses, check the total is finite (one sync),
    zero the gradients, backward, step.
    """
    images = [image.to(device) for image in images]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), torchvision_heads(model):
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
    loss_value = float(losses.item())
    if not math.isfinite(loss_value):
        raise RuntimeError(f"loss is {loss_value}")
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return loss_value


@contextlib.contextmanager
def torchvision_heads(model: nn.Module) -> Iterator[None]:
    """`model` as torchvision's own detector, RPN and RoI heads while the block runs (its per-image checks,
    matching, sampling and targets). Ours subclass them and add no state (the same modules and parameters), so
    the loops can share one model and its optimizer."""
    parts = [model, model.rpn, model.roi_heads]
    ours = [type(part) for part in parts]
    for part in parts:
        part.__class__ = next(c for c in type(part).__mro__ if c.__module__.startswith("torchvision."))
    try:
        yield
    finally:
        for part, own in zip(parts, ours, strict=True):
            part.__class__ = own


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def waits_and_ops(step: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """(host waits, dispatched operations) of one call of `step`. On a GPU the waits are what
    `torch.cuda.set_sync_debug_mode` reports (every synchronising CUDA call, copies to the host included); on the
    CPU, the operations that would make the host wait on a GPU (scratchdet.engine.op_count), which leaves out
    copies to the host."""
    from scratchdet.engine.op_count import count_ops

    if device.type != "cuda":
        counts = count_ops(step)
        return counts.host_waits, counts.total
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            counts = count_ops(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), counts.total


def kernel_profile(step: Callable[[], Any], device: torch.device, steps: int) -> tuple[float, float]:
    """(CUDA kernels launched, seconds the GPU ran a kernel) per call of `step`, over `steps` calls under
    torch.profiler; NaN on a CPU, or where the profiler saw no kernel. Kernel durations are the GPU's own, so the
    profiler's host overhead does not inflate them; overlapping kernels (several streams) count once."""
    if device.type != "cuda":
        return math.nan, math.nan
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    spans = sorted(
        (event.time_range.start, event.time_range.end)
        for event in profiler.events()
        if event.device_type == DeviceType.CUDA and not event.name.startswith(("Memcpy", "Memset"))
    )
    if not spans:
        return math.nan, math.nan
    busy, reach = 0.0, -math.inf  # the union of the kernels' intervals (microseconds)
    for start, end in spans:
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return len(spans) / steps, busy / 1e6 / steps


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset; on the CPU, the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """The same description of the machine that every run's summary.json records."""
    from scratchdet.engine.rundir import machine_description

    return machine_description()


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of `rows` (floats to 3 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, name: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **extra, "rows": rows}, indent=2) + "\n")
    print(f"written: {path}")
