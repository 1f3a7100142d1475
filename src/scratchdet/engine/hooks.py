"""Hooks of a training run: metrics (JSON lines, TensorBoard, progress), periodic evaluation, checkpoints.

Order matters and is the order they are given in: evaluation, then metrics, then checkpoint, so a checkpoint at
iteration k is written after everything logged up to k.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scratchdet.engine import distributed, rundir
from scratchdet.engine.checkpoint import Checkpointer
from scratchdet.engine.trainer import HookBase
from scratchdet.storage import append_line, with_file_name

log = logging.getLogger(__name__)
EvaluateFn = Callable[[int, bool], dict[str, dict[str, float]]]  # (iteration, final) → metrics


class MetricsWriter:
    """Appends one JSON object per record to metrics.jsonl, and mirrors scalars to TensorBoard.

    Each record carries `time`, the wall clock (Unix seconds) when it was written: a study's timeline
    (study/timeline.py) places evaluations and training with it."""

    def __init__(self, run_dir: Path, start_iteration: int) -> None:
        self.path = run_dir / rundir.METRICS
        self._tensorboard: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint.
            self._tensorboard = SummaryWriter(str(run_dir / rundir.TENSORBOARD), purge_step=start_iteration or None)
        except ImportError:  # tensorboard is a dependency; tolerate its absence in stripped installs
            log.warning("tensorboard is not installed: no event files")

    def write(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        try:
            append_line(self.path, json.dumps(record))
        except OSError as exc:
            raise with_file_name(exc, self.path) from None
        if self._tensorboard is not None:
            try:
                for key, value in _flatten(record).items():
                    scalar = isinstance(value, int | float) and not isinstance(value, bool)
                    if scalar and key not in ("iteration", "time"):
                        self._tensorboard.add_scalar(key, value, record["iteration"])
            except OSError as exc:
                raise with_file_name(exc, self.path.parent / rundir.TENSORBOARD) from None

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_duration(seconds: float) -> str:
    """1m05s, 12m00s, 3h07m."""
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class MetricsHook(HookBase):
    """Every `period` steps (and the last): a metrics record, and a progress bar or a plain log line."""

    def __init__(self, writer: MetricsWriter, period: int, pretrain_counts: dict[str, Any] | None = None) -> None:
        self.writer = writer
        self.period = period
        self.pretrain_counts = pretrain_counts
        self._bar: Any = None
        self._window: list[tuple[float, float]] = []

    def before_train(self) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            schedule = self.trainer.schedule
            self._bar = tqdm(total=schedule.total_iterations, initial=self.trainer.iteration, desc="train", unit="it")

    def after_step(self) -> None:
        trainer = self.trainer
        self._window.append((trainer.last_step_seconds, trainer.last_data_seconds))
        if self._bar is not None:
            total = sum(trainer.last_losses.values())
            images_per_second = trainer.schedule.images_per_batch / max(trainer.last_step_seconds, 1e-9)
            self._bar.set_postfix(loss=f"{total:.3f}", lr=f"{trainer.last_lr:.4g}", img_s=f"{images_per_second:.1f}")
            self._bar.update(1)
        if trainer.iteration % self.period == 0 or trainer.finished:
            self._write()

    def _write(self) -> None:
        trainer = self.trainer
        step = sum(s for s, _ in self._window) / len(self._window)
        data = sum(d for _, d in self._window) / len(self._window)
        steps, self._window = len(self._window), []
        record: dict[str, Any] = {
            "iteration": trainer.iteration,
            **trainer.last_losses,
            "total_loss": sum(trainer.last_losses.values()),
            "lr": trainer.last_lr,
            "seconds_per_iteration": step,
            "data_seconds": data,
            "timed_steps": steps,  # the steps this process timed since its last record (fewer after a resume)
            **{f"{name}_seen": value for name, value in trainer.counts.as_dict().items()},
        }
        if self.pretrain_counts:
            record["pretrain"] = self.pretrain_counts
        self.writer.write(record)
        if self._bar is None:
            total_iterations = trainer.schedule.total_iterations
            eta = format_duration(step * (total_iterations - trainer.iteration))
            terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in trainer.last_losses.items())
            log.info(
                f"iter {trainer.iteration}/{total_iterations}  loss {record['total_loss']:.3f} ({terms})  "
                f"lr {trainer.last_lr:.4g}  {step:.3f} s/it  data {data:.3f} s  eta {eta}"
            )

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


def evaluation_due(iteration: int, period: int, period_from: Mapping[int, int]) -> bool:
    """Whether a periodic evaluation falls at `iteration`: a multiple of the period in force there, `period` until
    the first ITERATION of `period_from` ({ITERATION: PERIOD}) it has reached, then that one's PERIOD (0: none)."""
    for start in sorted(period_from):
        if iteration >= start:
            period = period_from[start]
    return period > 0 and iteration % period == 0


class EvalHook(HookBase):
    """Evaluation every `period` steps (0: never during training; `period_from` changes it from given iterations on)
    and once training has ended."""

    def __init__(
        self,
        evaluate: EvaluateFn,
        writer: MetricsWriter | None,
        period: int,
        period_from: Mapping[int, int] | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.writer = writer
        self.period = period
        self.period_from = dict(period_from or {})
        self.final_results: dict[str, dict[str, float]] | None = None

    def _run(self, final: bool) -> None:
        iteration = self.trainer.iteration
        started = time.perf_counter()
        results = self.evaluate(iteration, final)
        seconds = time.perf_counter() - started
        if self.writer is not None:  # None on ranks other than 0, which evaluate their share but write nothing
            record = {"iteration": iteration, "eval": results, "eval_seconds": seconds}
            self.writer.write({**record, "final": True} if final else record)
        summary = "  ".join(
            f"{task} {name} {value:.2f}"
            for task, metrics in results.items()
            for name, value in list(metrics.items())[:2]
        )
        log.info(f"evaluation at iteration {iteration}: {summary}  ({seconds:.1f} s)")
        if final:
            self.final_results = results

    def after_step(self) -> None:
        if not self.trainer.finished and evaluation_due(self.trainer.iteration, self.period, self.period_from):
            self._run(final=False)

    def after_train(self) -> None:
        # After the last checkpoint: a run killed during its final evaluation resumes at the end and redoes it.
        self._run(final=True)


class CheckpointHook(HookBase):
    """A checkpoint every `period` steps, after the last one and before a pause; `extra` is stored beside the
    trainer state.

    Every process gathers the state (it holds each one's random state); rank 0 writes it.
    """

    def __init__(self, checkpointer: Checkpointer, period: int, extra: dict[str, Any]) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self.extra = extra

    def after_step(self) -> None:
        trainer = self.trainer
        due = trainer.iteration % self.period == 0 or trainer.iteration in self.checkpointer.keep_iterations
        if due or trainer.finished or trainer.pausing:
            state = trainer.state_dict()
            if distributed.is_main():
                self.checkpointer.save(trainer.iteration, {**state, **self.extra})
