"""A study's timeline from the executor's events and the runs' timed records (the real executor writing them is
checked in test_runner.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchdet.study.report import timeline_table
from scratchdet.study.timeline import TIMELINE, read_timeline


def _write(path: Path, lines: list[dict[str, object]], torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + torn)


def _step(iteration: int, time: float, seconds: float, steps: int) -> dict[str, object]:
    return {"iteration": iteration, "total_loss": 1.0, "seconds_per_iteration": seconds, "timed_steps": steps,
            "time": time}  # fmt: skip


def _evaluation(iteration: int, time: float, seconds: float) -> dict[str, object]:
    return {"iteration": iteration, "eval": {"bbox": {"AP": 1.0}}, "eval_seconds": seconds, "time": time}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A first call killed early, then a second one: a parent (start-up 3 s, 20 steps of 0.5 s with an evaluation of
    2 s after step 10, a final one of 4 s) and a fork at 10 that copied the parent's records up to there, started
    once the parent's checkpoint at 10 existed, trained 4 steps of 1 s and evaluated once (1 s); a third run still
    going when the study was killed (start-up 0.5 s, evaluating after its step 2). Records in the order the hooks
    write them: at an iteration, the evaluation, then the steps' record, then the checkpoint."""
    t0 = 1000.0
    _write(tmp_path / TIMELINE, [
        {"event": "submitted", "time": 900.0, "slots": 4},
        {"event": "started", "run": "arms/old", "time": 901.0},
        {"event": "submitted", "time": t0, "slots": 2},
        {"event": "started", "run": "arms/parent", "time": t0 + 1},
        {"event": "started", "run": "arms/fork", "time": t0 + 12},
        {"event": "ended", "run": "arms/fork", "time": t0 + 18, "exit_code": 0},
        {"event": "started", "run": "arms/late", "time": t0 + 20},
        {"event": "ended", "run": "arms/parent", "time": t0 + 21, "exit_code": 0},
        {"event": "started", "time": t0 + 25},  # not one this tool writes: skipped
    ], torn='{"event": "ended", "run": "arms/la')  # fmt: skip
    parent = [_step(5, t0 + 6.5, 0.5, 5), _evaluation(10, t0 + 11, 2.0), _step(10, t0 + 11, 0.5, 5),
              _step(15, t0 + 13.5, 0.5, 5), _step(20, t0 + 16, 0.5, 5), _evaluation(20, t0 + 20, 4.0)]  # fmt: skip
    _write(tmp_path / "arms" / "parent" / "metrics.jsonl", parent)
    copied = parent[:3]  # the fork's record begins with the parent's, up to its fork (10)
    _write(tmp_path / "arms" / "fork" / "metrics.jsonl", [*copied, _step(14, t0 + 16.5, 1.0, 4),
                                                           _evaluation(14, t0 + 17.5, 1.0)])  # fmt: skip
    # Evaluated after its step 2 (2 s), before it logged its steps at 5: 5 steps of 1 s.
    _write(tmp_path / "arms" / "late" / "metrics.jsonl", [_evaluation(2, t0 + 24.5, 2.0), _step(5, t0 + 27.5, 1.0, 5)])
    return tmp_path


def test_each_run_of_the_latest_call_is_split_into_waiting_start_up_training_and_evaluating(study: Path) -> None:
    timeline = read_timeline(study)
    assert timeline is not None and timeline.slots == 2
    assert [r.run for r in timeline.runs] == ["arms/parent", "arms/fork", "arms/late"]  # "old" was the first call's
    parent, fork, late = timeline.runs
    assert (parent.started, parent.ended, parent.wall, parent.exit_code) == (1, 21, 20, 0)
    assert (parent.steps, parent.training, parent.evaluating) == (20, 10.0, 6.0)
    assert parent.other == pytest.approx(4.0)  # 3 s start-up, 1 s after the final evaluation
    assert parent.evaluations == [(9.0, 11.0), (16.0, 20.0)]
    assert parent.training_span == (4.0, 16.0)
    # The fork's copy of the parent's records is not its work: 4 steps and one evaluation of its own.
    assert (fork.started, fork.wall, fork.steps, fork.training, fork.evaluating) == (12, 6, 4, 4.0, 1.0)
    assert fork.training_span == (12.5, 16.5)
    # Killed before its end was written (a torn line): it ends at its last record, its exit unknown.
    assert (late.started, late.ended, late.exit_code, late.steps) == (20, 27.5, None, 5)
    assert late.training_span == (20.5, 27.5)  # its first steps ran before the evaluation
    assert timeline.span == 27.5
    assert timeline.busy == pytest.approx((20 + 6 + 7.5) / (2 * 27.5))
    rows = timeline_table(timeline)
    assert rows[1] == ["arms/parent", "1.0", "4.0", "10.0 (20)", "6.0 (2)", "20.0", "21.0", "0"]
    assert rows[3][-1] == "running or killed"


def test_a_study_without_events_has_no_timeline(tmp_path: Path) -> None:
    assert read_timeline(tmp_path) is None
    _write(tmp_path / TIMELINE, [{"event": "started", "run": "arms/a", "time": 1.0}])  # no submission: not ours
    assert read_timeline(tmp_path) is None
