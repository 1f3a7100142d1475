"""The fault suite: real training processes killed (SIGKILL) at seven points, a full disk, a second writer.

Every killed run is resumed with `scratchdet train --resume` and must end exactly where an uninterrupted run ends:
bitwise-equal weights, the same losses at every logged iteration, the same final metrics. The kill points are
planted by tests/engine/kill_at.py, so each lands where it is meant to (inside a checkpoint write, between the
checkpoint and its pointer, ...) rather than wherever an outside signal happens to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchdet.engine.rundir import read_metrics
from scratchdet.storage import try_lock
from tests.conftest import final_weights, tiny_training_overrides

pytestmark = pytest.mark.slow

KILL_AT = Path(__file__).with_name("kill_at.py")
PLANTED = Path(__file__).with_name("planted")  # on PYTHONPATH with SCRATCHDET_PLANT=POINT:N: kill_at's faults anywhere
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
# 40 iterations of 4 images; a checkpoint every 5 iterations, an evaluation every 10, a metrics record every 5.
RUN = ["solver.base_epochs=null", "solver.schedule=0.000111111x", "eval.max_images=4", "eval.period=10",
       "output.checkpoint_period=5", "output.keep_last=2", "data.num_workers=1"]  # fmt: skip


def _start_arguments(synth_dir: Path, out: Path) -> list[str]:
    return ["train", "demo/mask_rcnn", *tiny_training_overrides(synth_dir), *RUN, "--out", str(out)]


def _scratchdet(arguments: list[str], fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess[str]:
    prefix = [sys.executable, str(KILL_AT), fault[0], str(fault[1])] if fault else [sys.executable, "-m", "scratchdet"]
    return subprocess.run([*prefix, *arguments], capture_output=True, text=True, env=ENV, check=False)


def _training_records(run_dir: Path) -> list[dict[str, object]]:
    """Logged losses, lr and counts per iteration, without the timings (which differ between runs)."""
    timing = ("seconds_per_iteration", "data_seconds", "eval_seconds", "timed_steps", "time")
    return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def reference(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    result = _scratchdet(_start_arguments(synth_dir, run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def _assert_same_run(ours: Path, reference: Path) -> None:
    mine, theirs = final_weights(ours), final_weights(reference)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert _training_records(ours) == _training_records(reference)  # nothing lost, nothing logged twice
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (ours, reference))
    assert summary["final"] == expected["final"] and summary["counts"] == expected["counts"]


KILL_POINTS = [
    ("step", 13),  # between the checkpoints at 10 and 15
    ("checkpoint-write", 3),  # the checkpoint of iteration 15, half written
    ("checkpoint-pointer", 4),  # model_0000020.pth in place, last_checkpoint still names 15
    ("metrics-write", 5),  # a torn line in metrics.jsonl
    ("evaluation", 2),  # the evaluation at iteration 20
    ("evaluation", 4),  # the final evaluation (after those at 10, 20, 30), after the last checkpoint
    ("summary", 1),  # everything done but summary.json
]


@pytest.mark.parametrize(("point", "n"), KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_sigkill_at_a_planted_point_then_resume_ends_exactly_like_an_uninterrupted_run(
    point: str, n: int, reference: Path, synth_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    killed = _scratchdet(_start_arguments(synth_dir, run_dir), fault=(point, n))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run_dir / "summary.json").exists()
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run_dir, reference)
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "a partial checkpoint write was left behind"
    if point == "checkpoint-write":
        assert "removed 1 partly written file(s)" in resumed.stderr
        assert "resuming from" in resumed.stderr and "model_0000010.pth" in resumed.stderr


def test_sigterm_saves_at_the_end_of_the_step_and_resume_ends_exactly_like_an_uninterrupted_run(
    reference: Path, synth_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "terminated"
    stopped = _scratchdet(_start_arguments(synth_dir, run_dir), fault=("sigterm", 13))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    message = "stopped at iteration 14 on request (SIGTERM), of 40; its checkpoint is saved: continue with --resume"
    assert f"{message} {run_dir}" in stopped.stderr
    # Asked during step 13, after that step's collective: every process learns it at the next one and stops after
    # step 14, between the periodic checkpoints at 10 and 15; nothing done since the last one is lost.
    assert (run_dir / "checkpoints" / "last_checkpoint").read_text() == "model_0000014.pth"
    assert not (run_dir / "summary.json").exists()
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "model_0000014.pth" in resumed.stderr
    _assert_same_run(run_dir, reference)


def test_stop_at_pauses_there_and_resume_ends_exactly_like_an_uninterrupted_run(
    reference: Path, synth_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "paused"
    paused = _scratchdet([*_start_arguments(synth_dir, run_dir), "--stop-at", "12"])
    assert paused.returncode == 0, paused.stderr[-2000:]
    assert "paused at iteration 12 as asked (--stop-at)" in paused.stderr
    assert (run_dir / "checkpoints" / "last_checkpoint").read_text() == "model_0000012.pth"
    assert not (run_dir / "summary.json").exists() and "final" not in (run_dir / "metrics.jsonl").read_text()
    again = _scratchdet(["train", "--resume", str(run_dir), "--stop-at", "12"])  # already there: nothing to do
    assert again.returncode == 0 and "paused at iteration 12" in again.stderr
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run_dir, reference)


def test_a_full_disk_stops_the_run_with_a_clear_error_and_resume_finishes_it(
    reference: Path, synth_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "full"
    failed = _scratchdet(_start_arguments(synth_dir, run_dir), fault=("disk-full", 3))
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    message = failed.stderr.strip().splitlines()[-1]
    assert "could not write checkpoint" in message and "model_0000015.pth: No space left on device" in message
    assert "earlier checkpoints are intact" in message and "--resume" in message
    assert (run_dir / "checkpoints" / "last_checkpoint").read_text() == "model_0000010.pth"
    torch.load(run_dir / "checkpoints" / "model_0000010.pth", weights_only=True)  # intact and readable
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run_dir, reference)


@pytest.mark.parametrize(
    ("fault", "written"),
    [(("disk-full-metrics", 4), "/metrics.jsonl"), (("disk-full-log", 10), "/log.txt"),
     (("disk-full-tensorboard", 20), "/tensorboard"), (("disk-full-detections", 1), "detections.json"),
     (("disk-full-summary", 1), "summary.json")],
    ids=["metrics", "log", "tensorboard", "detections", "summary"],
)  # fmt: skip
def test_a_full_disk_at_any_write_ends_in_one_message_and_resume_finishes_the_run(
    reference: Path, synth_dir: Path, tmp_path: Path, fault: tuple[str, int], written: str
) -> None:
    run_dir = tmp_path / "full"
    failed = _scratchdet(_start_arguments(synth_dir, run_dir), fault=fault)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr and "Logging error" not in failed.stderr
    message = failed.stderr.strip().splitlines()[-1]
    assert "no space left on device writing" in message and written in message, message
    assert "the run keeps" in message and f"`scratchdet train --resume {run_dir}`" in message, message
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run_dir, reference)


def test_a_second_process_on_a_running_run_is_refused(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((reference / "config.yaml").read_text())
    handle = try_lock(run_dir / ".lock")  # this test process plays the run that is still going
    assert handle is not None
    try:
        refused = _scratchdet(["train", "--resume", str(run_dir)])
    finally:
        os.close(handle)
    assert refused.returncode == 2
    assert f"is in use by process {os.getpid()}" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.yaml"]  # it touched nothing
    assert _scratchdet(["train", "--resume", str(run_dir)]).returncode == 0  # once free, the run goes on
    _assert_same_run(run_dir, reference)


def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back_to_the_one_before(
    reference: Path, synth_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "damaged"
    killed = _scratchdet(_start_arguments(synth_dir, run_dir), fault=("step", 13))
    assert killed.returncode == -signal.SIGKILL
    newest = run_dir / "checkpoints" / "model_0000010.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # as a crash of the file system, or a bad copy, would leave it
    resumed = _scratchdet(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest} is unreadable or corrupt" in resumed.stderr
    assert "falling back to the previous checkpoint" in resumed.stderr
    assert "model_0000005.pth at iteration 5" in resumed.stderr
    _assert_same_run(run_dir, reference)
