"""Where a study's time went: how long each run waited, and how its process spent its life (start-up, training,
evaluating).

The local executor appends events to STUDY_DIR/timeline.jsonl: `submitted` when it begins (with its slots, the runs
it may train at once), then `started` and `ended` for each run's process. Inside a run, each metrics record carries
the wall clock when it was written (`time`) and how long it took: a training record `seconds_per_iteration` ×
`timed_steps`, an evaluation `eval_seconds`. The report shows the latest submission (a resumed study starts a new
one). Other executors write no events (Slurm keeps its own accounting: `sacct`), so their studies have no timeline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchdet.engine import rundir
from scratchdet.storage import append_line

TIMELINE = "timeline.jsonl"


def record_event(study_dir: Path, event: str, **fields: Any) -> None:
    """Append one event (`submitted`, `started`, `ended`) with the wall clock to STUDY_DIR/timeline.jsonl."""
    append_line(Path(study_dir) / TIMELINE, json.dumps({"event": event, "time": round(time.time(), 3), **fields}))


@dataclass
class RunTimes:
    """One run's process in a submission; times in seconds after the submission began."""

    run: str  # pretrain/NAME or arms/NAME
    started: float  # until then it waited: for a run it needs, or for a free slot
    ended: float  # its exit; for a process that has not ended, its last record
    exit_code: int | None  # None: it has not ended (still running, or the study was killed)
    steps: int = 0  # training steps it took
    training: float = 0.0  # the steps' own time (data loading included)
    training_span: tuple[float, float] | None = None  # from its first step to its last record
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def evaluating(self) -> float:
        return sum(end - start for start, end in self.evaluations)

    @property
    def other(self) -> float:
        """Neither a step nor an evaluation: start-up (imports, data index, model), checkpoints, the summary."""
        return max(0.0, self.wall - self.training - self.evaluating)


@dataclass
class Timeline:
    slots: int  # runs the executor trained at once, at most
    runs: list[RunTimes]  # by start

    @property
    def span(self) -> float:
        """From the submission to the last run's end."""
        return max((r.ended for r in self.runs), default=0.0)

    @property
    def busy(self) -> float:
        """The share of the slots' time (slots × span) that runs' processes held."""
        return sum(r.wall for r in self.runs) / (self.slots * self.span) if self.span > 0 else 0.0


def read_timeline(study_dir: Path) -> Timeline | None:
    """The latest submission's timeline; None when the study has none (another executor, or never run)."""
    path = Path(study_dir) / TIMELINE
    if not path.is_file():
        return None
    events = _events(path)
    starts = [i for i, e in enumerate(events) if e.get("event") == "submitted"]
    if not starts:
        return None
    submitted, *events = events[starts[-1] :]
    origin = float(submitted["time"])
    started = {e["run"]: float(e["time"]) for e in events if e.get("event") == "started"}
    ended = {e["run"]: (float(e["time"]), e.get("exit_code")) for e in events if e.get("event") == "ended"}
    runs = [
        _run_times(Path(study_dir) / run, run, origin, begin, ended.get(run, (None, None)))
        for run, begin in started.items()
    ]
    return Timeline(int(submitted.get("slots", 1)), sorted(runs, key=lambda r: (r.started, r.run)))


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a torn last line: the study was killed while writing it
            continue
        ours = isinstance(event, dict) and isinstance(event.get("time"), int | float)
        if ours and (event.get("event") == "submitted" or isinstance(event.get("run"), str)):
            events.append(event)
    return events


def _run_times(run_dir: Path, run: str, origin: float, begin: float, end: tuple[float | None, int | None]) -> RunTimes:
    """What `run_dir`'s process did between `begin` and its end, from the records it wrote meanwhile."""
    last, exit_code = end
    records = [
        r
        for r in rundir.read_metrics(run_dir)
        if isinstance(r.get("time"), int | float) and begin <= r["time"] and (last is None or r["time"] <= last)
    ]
    evaluations = [(r["time"] - r.get("eval_seconds", 0.0), r["time"]) for r in records if "eval" in r]
    steps = [r for r in records if "timed_steps" in r]
    windows = [(r["time"], r["seconds_per_iteration"] * r["timed_steps"]) for r in steps]
    if last is None:
        last = max((r["time"] for r in records), default=begin)
    times = RunTimes(run, begin - origin, last - origin, exit_code)
    times.steps = sum(int(r["timed_steps"]) for r in steps)
    times.training = sum(seconds for _, seconds in windows)
    times.evaluations = [(start - origin, stop - origin) for start, stop in evaluations]
    if windows:
        # The first window's steps ran before its record, after any evaluation written just before it.
        first_time, first_seconds = windows[0]
        before = sum(stop - start for start, stop in evaluations if stop <= first_time)
        times.training_span = (first_time - first_seconds - before - origin, windows[-1][0] - origin)
    return times
