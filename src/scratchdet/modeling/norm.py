"""Every normalization layer in a model comes from `get_norm`: one name, one channels → module factory.

`frozen_bn`  torchvision's FrozenBatchNorm2d: a fixed affine (the classic fine-tuning baseline).
`bn`         BatchNorm2d with per-device statistics.
`syncbn`     batch norm whose statistics span all processes (`SyncBatchNorm` below).
`gn`         GroupNorm, 32 groups and eps 1e-5 by default (the paper's). Rule for narrow layers: when the
             channel count is not a multiple of the group count, the largest divisor of the channel count that is
             not above the group count is used (e.g. 24 channels with 32 groups → 24 groups; 48 with 32 → 24).
`none`       no normalization: `get_norm` returns None (torchvision's convention), `norm_or_identity` gives Identity.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from scratchdet.errors import ScratchdetError
from scratchdet.names import NORMS

NormFactory = Callable[[int], nn.Module]
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d, nn.GroupNorm)
log = logging.getLogger(__name__)


def group_count(channels: int, groups: int) -> int:
    """The number of GN groups used for `channels` when `groups` is asked for (see the module docstring)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int, *, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with the channel count first, so it drops in wherever BatchNorm2d does."""
    return nn.GroupNorm(group_count(channels, groups), channels, eps=eps)


class _AllReduceStatistics(torch.autograd.Function):
    """Sum a tensor over all processes; the gradient is summed back the same way (it is linear)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm(nn.BatchNorm2d):
    """Batch norm with statistics over every process, on any device, for any (even empty) per-process batch.

    Each process contributes its element count, sum and sum of squares; one all-reduce gives the global mean and
    variance, so processes with unequal (or zero) batch sizes are weighted by what they hold. Statistics are
    computed in fp32 whatever the input dtype. Without an initialized process group (one process) it is exactly
    BatchNorm2d, with a one-time note.
    """

    _noted_single_process = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            if self.training and not SyncBatchNorm._noted_single_process:
                log.info("syncbn in a single process: statistics are this process's batch (plain batch norm)")
                SyncBatchNorm._noted_single_process = True
            return super().forward(input)
        channels = input.shape[1]
        values = input.float().transpose(0, 1).reshape(channels, -1)
        count = torch.full((1,), values.shape[1], dtype=torch.float32, device=input.device)
        local = torch.cat([values.sum(1), (values * values).sum(1), count])
        total = _AllReduceStatistics.apply(local)
        global_count = total[-1]
        elements = global_count.item()  # read once: each read waits for the device
        if elements == 0:  # nobody has data: nothing to normalize, running statistics unchanged
            return input + 0 * (self.weight.sum() + self.bias.sum()) if self.affine else input
        mean = total[:channels] / global_count
        variance = (total[channels : 2 * channels] / global_count - mean * mean).clamp(min=0)
        self._update_running_statistics(mean.detach(), variance.detach(), elements)
        scale = torch.rsqrt(variance + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        output = input.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, variance: torch.Tensor, count: float) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        unbiased = variance * count / max(count - 1, 1)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:  # a cumulative average, as BatchNorm2d does (Precise BN relies on it)
            momentum = 1.0 / float(self.num_batches_tracked) if self.num_batches_tracked is not None else 0.1
        else:
            momentum = self.momentum
        self.running_mean.mul_(1 - momentum).add_(momentum * mean)
        self.running_var.mul_(1 - momentum).add_(momentum * unbiased)


def use_torch_sync_batch_norm(model: nn.Module, keep_own_under: tuple[str, ...] = ("roi_heads.mask_head",)) -> int:
    """Swap our SyncBatchNorm for `torch.nn.SyncBatchNorm` (fused CUDA kernels) where that is safe; the count.

    Torch's version copes with an empty batch on some processes but not on all of them at once, which can happen
    in the mask head (no positive RoI anywhere early in training): layers under `keep_own_under` keep ours. Both
    hold the same parameters and buffers, so checkpoints are interchangeable. For CUDA only.
    """
    swapped = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, SyncBatchNorm) or any(name.startswith(prefix) for prefix in keep_own_under):
            continue
        replacement = nn.SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        replacement.load_state_dict(module.state_dict())
        tensors = [*module.parameters(), *module.buffers()]
        if tensors:
            replacement.to(tensors[0].device)
        replacement.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        swapped += 1
    return swapped


def get_norm(norm: str | NormFactory, *, gn_groups: int = 32, gn_eps: float = 1e-5) -> NormFactory | None:
    """A channels → module factory for `norm` (a name or a callable, returned as is); None for "none"."""
    if callable(norm):
        return norm
    factories: dict[str, NormFactory | None] = {
        "frozen_bn": FrozenBatchNorm2d,
        "bn": nn.BatchNorm2d,
        "syncbn": SyncBatchNorm,
        "gn": functools.partial(group_norm, groups=gn_groups, eps=gn_eps),
        "none": None,
    }
    if norm not in factories:
        raise ScratchdetError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return factories[norm]


def norm_or_identity(factory: NormFactory | None) -> NormFactory:
    """For modules (like torchvision's ResNet blocks) that always call their norm factory."""
    return factory if factory is not None else (lambda channels: nn.Identity())


def norm_layers(model: nn.Module) -> dict[str, int]:
    """Count of each normalization layer type in `model`, by class name."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts
