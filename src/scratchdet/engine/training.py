"""The skeleton every training run follows — detection training (`detection.py`) and pre-training (`pretrain.py`) alike.

Open the run directory (or return the summary of a finished one), seed, build what the kind of run trains
(`TrainingSetup`), resume from the newest loadable checkpoint, train with the evaluation, metrics and checkpoint
hooks, and write the summary last. What differs between kinds of run is only what `TrainingSetup` holds; the order
of these steps, the hooks and what a resumed run repeats are the same for both, so a fix to one reaches the other.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchdet.config import Config
from scratchdet.data.batching import TrainingBatches, pack
from scratchdet.engine import distributed, rundir
from scratchdet.engine.hooks import CheckpointHook, EvalHook, EvaluateFn, MetricsHook, MetricsWriter
from scratchdet.engine.schedule import Schedule
from scratchdet.engine.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    """What one kind of training run supplies to `run_training`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    batches: Callable[[int], Iterator[Any]]  # the stream from a start iteration
    evaluate: EvaluateFn  # (iteration, final) -> metrics
    eval_period: int
    log_period: int
    checkpoint_period: int
    checkpoint_extra: dict[str, Any]  # saved in every checkpoint beside the model and trainer state
    describe: Callable[[Schedule], str]  # the log line that starts training
    finish: Callable[[Trainer, dict[str, Any] | None], dict[str, Any]]  # (trainer, final metrics) -> summary fields
    keep_last: int = 0
    keep_iterations: tuple[int, ...] = ()
    pretrain_counts: dict[str, int] | None = None  # what the init's pre-training saw (added to logged counts)
    trainer_options: dict[str, Any] = field(default_factory=dict)  # count_batch, clip_grad_norm, precision
    eval_period_from: dict[int, int] = field(default_factory=dict)  # {iteration: period}: the period from there on


def run_training(
    config: Config,
    run_dir: Path,
    *,
    resume: bool,
    command: str,
    prepare: Callable[[torch.device], TrainingSetup],
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train (or continue) the run in `run_dir` with what `prepare(device)` builds; returns the summary.

    Under torchrun every process calls it and the processes share each global batch; rank 0 writes. With
    `stop_at`, or when SIGTERM arrives (a scheduler's time limit, pre-emption, `scancel`), it checkpoints at the
    end of a step and raises `TrainingPaused`; `--resume` continues exactly from there.
    """
    run_dir = Path(run_dir)
    device = distributed.init_from_environment()
    finished = rundir.open_run(run_dir, config, resume=resume, command=command)
    if finished is not None:
        return finished
    started = time.perf_counter()
    distributed.on_main(lambda: rundir.keep_data_record(run_dir, rundir.data_record(config, command), resume=resume))
    seed_everything(config.seed)
    job = prepare(device)
    checkpoints = rundir.checkpointer(run_dir, job.keep_last, job.keep_iterations)
    state, start_iteration = rundir.resume_point(run_dir, checkpoints, resume)
    writer = MetricsWriter(run_dir, start_iteration) if distributed.is_main() else None
    eval_hook = EvalHook(job.evaluate, writer, job.eval_period, job.eval_period_from)
    hooks = [
        eval_hook,
        *([MetricsHook(writer, job.log_period, job.pretrain_counts)] if writer is not None else []),
        CheckpointHook(checkpoints, job.checkpoint_period, job.checkpoint_extra),
    ]
    trainer = Trainer(
        distributed.wrap(job.model, device),
        job.optimizer,
        job.schedule,
        job.batches(start_iteration),
        hooks=hooks,
        device=device,
        **job.trainer_options,
    )
    if state is not None:
        trainer.load_state_dict(state)
    trainer.stop_at = stop_at
    log.info(job.describe(job.schedule))
    try:
        with _stop_on_sigterm(trainer):
            trainer.train()
    finally:
        if writer is not None:
            writer.close()
    summary = {
        "iteration": trainer.iteration,
        **job.finish(trainer, eval_hook.final_results),
        "counts": trainer.counts.as_dict(),
        "train_seconds": trainer.train_seconds,
        "schedule": trainer.schedule.as_dict(),
    }
    return rundir.finish_run(run_dir, summary, started)


@contextmanager
def _stop_on_sigterm(trainer: Trainer) -> Iterator[None]:
    """SIGTERM during training asks `trainer` to stop at the end of a step, with a checkpoint (all processes at the
    same step: see `Trainer._reduce`). Repeated SIGTERMs change nothing (a launcher passes on the one Slurm sent
    everyone); SIGKILL stops at once. Outside training SIGTERM terminates as usual. Only the main thread may set
    signal handlers (tests call from others)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if not trainer.stop_requested:
            log.warning("SIGTERM: stopping at the end of a step, with a checkpoint")
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_stream(
    dataset: torch.utils.data.Dataset[Any],
    *,
    images_per_batch: int,
    seed: int,
    num_workers: int,
    start_iteration: int,
    aspect_groups: list[int] | None = None,
) -> Iterator[Any]:
    """This process's share of the training batches from `start_iteration` on.

    Order, transforms and sampling depend on the seed and iteration only, not on the number of processes.
    """
    processes = distributed.world_size()
    distributed.check_batch_split(images_per_batch, processes)
    sampler = TrainingBatches(
        len(dataset),  # type: ignore[arg-type]
        images_per_batch,
        seed=seed,
        aspect_groups=aspect_groups,
        start_iteration=start_iteration,
        rank=distributed.rank(),
        world_size=processes,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=pack,  # one buffer per kind of tensor: a few copies to the device a batch
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),  # so that the trainer's copies to the GPU can be asynchronous
        # A generator of its own: creating the loader must not draw from the global random stream, or a
        # resumed run would sample RoIs differently from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    yield from loader  # the batch sampler never ends; the trainer stops pulling


def measure_seconds_per_iteration(trainer: Trainer, steps: int = 4, warmup: int = 2) -> float:
    """Mean wall time of `steps` training steps after `warmup` untimed ones (for plans, not for records)."""
    for _ in range(warmup):
        trainer.run_step()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    return (time.perf_counter() - started) / steps
