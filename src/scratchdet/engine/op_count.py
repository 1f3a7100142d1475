"""Count the ATen operations of a piece of code, and those that make the host wait for the device.

On a GPU the host queues kernels and runs ahead; an operation whose result the host needs (a tensor read as a
Python number, `nonzero` and boolean-mask indexing, whose output size depends on the data, `unique`) makes it wait
until the device has caught up, and a step with hundreds of those is bound by the host. The same operations are
dispatched on the CPU, so counting them there tells, without a GPU, how many times a training step would stop the
host on one (`torch.cuda.set_sync_debug_mode` checks the count on a device: bench/gpu.py). Operations are
counted as PyTorch's dispatcher sees them, forward and backward, below autograd. A copy to the host (`.cpu()`,
`.tolist()`, `.numpy()`) is a wait on a GPU but dispatches nothing on the CPU, so it is not counted here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations whose output the host must see before it can go on (their result size or value is data-dependent).
WAITING_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",  # .item(), float(t), int(t), bool(t), if t: ...
        "aten.nonzero.default",  # torch.where(mask), mask.nonzero()
        "aten.masked_select.default",
        "aten._unique2.default",
        "aten.unique_dim.default",
        "aten.unique_consecutive.default",
        "aten.is_nonzero.default",
        "aten.equal.default",
    }
)
MASK_INDEXING_OPS = frozenset({"aten.index.Tensor", "aten.index_put_.default", "aten._index_put_impl_.default"})


def _indexes_with_a_mask(name: str, args: tuple[Any, ...]) -> bool:
    """`t[mask]` / `t[mask] = v`: the kernel finds the mask's true positions first, a wait on a GPU."""
    if name not in MASK_INDEXING_OPS or len(args) < 2:
        return False
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])


@dataclass
class OpCounts:
    """What one call dispatched: every operation by name, and those that would make the host wait for a GPU."""

    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    waits: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def host_waits(self) -> int:
        return sum(self.waits.values())


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OpCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = str(func)
        self.counts.ops[name] += 1
        if name in WAITING_OPS or _indexes_with_a_mask(name, args):
            self.counts.waits[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(function: Callable[[], Any]) -> OpCounts:
    """Run `function()` and count the operations it dispatched on this thread (the CPU's backward pass runs on
    the calling thread, so a training step is counted whole there)."""
    counts = OpCounts()
    with _Counter(counts):
        function()
    return counts
