"""The training loop: data → losses → backward → SGD step, with hooks for everything else.

One loop serves every task: the model is any module whose training forward takes `(images, targets)` and returns
a dict of losses (torchvision's detectors do; classification pre-training wraps its network the same way), and
`count_batch` says what a batch counts as (images, instances, pixels).

The trainer owns the iteration counter, the learning rate (a pure function of the iteration), the counts of what
has been seen, and the random-number state; hooks (logging, evaluation, checkpoints) are called around each step
and may contribute their own state, so a checkpoint holds everything needed to continue exactly.
`trainer.iteration` is the number of completed steps.

With several processes `model` is wrapped in DistributedDataParallel (which averages gradients) and each process
holds its share of the global batch; the logged losses are averaged and the counts summed over processes, so
every process holds the same numbers, and a checkpoint holds each process's random state.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchdet.data.batching import to_device
from scratchdet.engine import distributed
from scratchdet.engine.accounting import SeenCounts, batch_counts
from scratchdet.engine.schedule import Schedule, set_learning_rate
from scratchdet.errors import PAUSED_EXIT_CODE, ScratchdetError, TrainingPaused

log = logging.getLogger(__name__)

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class TrainingDiverged(ScratchdetError):
    """A loss became NaN or infinite."""


class HookBase:
    """Called by the trainer around training and each step; `self.trainer` is set before `before_train`."""

    trainer: Trainer

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch random states as plain containers and tensors (loadable with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _own_rng_state(saved: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """This process's random state from a checkpoint (a list with one per process; a dict from older files)."""
    if isinstance(saved, dict):
        return saved
    if len(saved) != distributed.world_size() and distributed.is_main():
        log.info(
            f"resuming with {distributed.world_size()} processes a run saved by {len(saved)}: data order and "
            "sampling continue unchanged, but losses are averaged per process, so the run is equivalent, not "
            "bitwise identical, to one that kept its process count"
        )
    return saved[distributed.rank() % len(saved)]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


class Trainer:
    """Runs `schedule.total_iterations` SGD steps of `model` on `batches`, starting at `start_iteration`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        batches: Iterator[Batch],
        *,
        hooks: Sequence[HookBase] = (),
        clip_grad_norm: float | None = None,
        device: torch.device | str = "cpu",
        count_batch: Callable[[list[torch.Tensor], list[dict[str, Any]]], SeenCounts] = batch_counts,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.batches = batches
        self.hooks = list(hooks)
        self.clip_grad_norm = clip_grad_norm
        self.device = torch.device(device)
        self.count_batch = count_batch
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.precision = precision
        self.iteration = 0
        self.counts = SeenCounts()
        self.train_seconds = 0.0
        self.last_losses: dict[str, float] = {}
        self.last_lr = 0.0
        self.last_step_seconds = 0.0
        self.last_data_seconds = 0.0
        self.stop_at: int | None = None  # pause (checkpoint, no final evaluation) once this many steps are done
        self.stop_requested = False  # set by a signal handler; acted on at the end of a step
        self.stopping = False  # some process requested a stop before this step's collective: all stop after it
        for hook in self.hooks:
            hook.trainer = self

    @property
    def finished(self) -> bool:
        return self.iteration >= self.schedule.total_iterations

    @property
    def pausing(self) -> bool:
        """This step is the last before a pause: the checkpoint hook saves it."""
        return not self.finished and (self.stopping or self.iteration == self.stop_at)

    def train(self) -> None:
        """Train to the end of the schedule; raises `TrainingPaused` when it pauses before (`stop_at`, a stop
        request), after the step's hooks have saved a checkpoint."""
        self.model.train()
        try:
            for hook in self.hooks:
                hook.before_train()
            while not self.finished:
                if self.iteration == self.stop_at:
                    self._pause(f"paused at iteration {self.iteration} as asked (--stop-at)", 0)
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
                if self.stopping and not self.finished:
                    self._pause(f"stopped at iteration {self.iteration} on request (SIGTERM)", PAUSED_EXIT_CODE)
            for hook in self.hooks:
                hook.after_train()
        except RuntimeError as exc:
            if distributed.is_peer_failure(exc):
                raise distributed.peer_failure(exc) from None
            raise

    def _pause(self, what: str, exit_code: int) -> None:
        raise TrainingPaused(
            f"{what}, of {self.schedule.total_iterations}; its checkpoint is saved: continue with --resume RUN_DIR",
            self.iteration,
            exit_code,
        )

    def run_step(self) -> None:
        started = time.perf_counter()
        # Asynchronous from pinned memory (the loader pins on CUDA machines): the host queues the step meanwhile.
        images, targets = to_device(next(self.batches), self.device)
        data_seconds = time.perf_counter() - started
        self.last_lr = self.schedule.lr_at(self.iteration)
        set_learning_rate(self.optimizer, self.last_lr)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            losses = self.model(images, targets)
        counts = self._reduce(losses, self.count_batch(images, targets))
        total = torch.stack(list(losses.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        self.counts.add(counts)
        self.iteration += 1
        self.last_data_seconds = data_seconds
        self.last_step_seconds = time.perf_counter() - started
        self.train_seconds += self.last_step_seconds

    def _reduce(self, losses: dict[str, torch.Tensor], counts: SeenCounts) -> SeenCounts:
        """Average the losses into `last_losses`, sum the batch counts over processes and agree on stopping (one
        collective).

        Before the backward pass, so that a non-finite loss on any process stops every process at the same step;
        a stop requested of any process stops all of them after this step.
        """
        local: list[float] = torch.stack([value.detach().float() for value in losses.values()]).tolist()  # one sync
        local += [counts.images, counts.instances, counts.pixels, float(self.stop_requested)]
        summed = distributed.sum_over_processes(local)
        processes = distributed.world_size()
        self.last_losses = {name: value / processes for name, value in zip(losses, summed, strict=False)}
        self._check_finite(self.last_losses)
        images, instances, pixels = (int(value) for value in summed[len(losses) : len(losses) + 3])
        self.stopping = summed[-1] > 0
        return SeenCounts(images, instances, pixels)

    def _check_finite(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            if not math.isfinite(value):
                terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
                raise TrainingDiverged(
                    f"training diverged at iteration {self.iteration}: {name} is {value} "
                    f"({terms}; lr {self.last_lr:.4g}). Lower solver.base_lr, lengthen solver.warmup_iters, "
                    "or set solver.clip_grad_norm; from scratch, use model.norm=gn or syncbn (without a proper "
                    "normalization, training from random initialization diverges)"
                )

    def state_dict(self) -> dict[str, Any]:
        """The full training state; with several processes every process must call it (it gathers them)."""
        return {
            "model": distributed.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "counts": self.counts.as_dict(),
            "train_seconds": self.train_seconds,
            "rng": distributed.all_gather(rng_state()),  # one per process
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        distributed.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.counts = SeenCounts.from_dict(state["counts"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        set_rng_state(_own_rng_state(state["rng"]))
        for hook in self.hooks:
            hook.load_state_dict(state.get("hooks", {}).get(type(hook).__name__, {}))
