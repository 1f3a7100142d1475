"""A study process killed with SIGKILL mid-arm: its arms die with it, and running the study again finishes only
what is missing, ending exactly where an uninterrupted study ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from scratchdet.engine.rundir import read_metrics
from scratchdet.study.runner import run_study
from tests.conftest import final_weights, tiny_training_overrides
from tests.engine.test_faults import PLANTED

pytestmark = pytest.mark.slow

LONG, SHORT = "scratch_gn_0.0000666667x_seed0", "scratch_gn_0.0000333333x_seed0"  # 24 and 12 iterations


def _processes_writing(folder: Path) -> list[int]:
    """PIDs of processes whose command line names `folder` (the arms of a study)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_study_resumes_only_what_is_missing_and_ends_like_an_uninterrupted_one(
    synth_dir: Path, tmp_path: Path
) -> None:
    overrides = [*tiny_training_overrides(synth_dir), "solver.base_epochs=null", "eval.max_images=4",
                 "eval.period=4", "output.checkpoint_period=5"]  # fmt: skip
    spec = {"base": "demo/mask_rcnn", "overrides": overrides,
            "axes": {"init": ["scratch"], "norm": ["gn"], "schedule": ["0.0000666667x", "0.0000333333x"]}}  # fmt: skip
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_study(spec_path, tmp_path / "reference")

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "scratchdet", "study", str(spec_path), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    # The long arm stops itself (SIGSTOP, planted) at its 12th step, past the checkpoint at 10: the arm has work to
    # keep and work to redo, and the study is certainly still running when it is killed.
    planted = {**env, "SCRATCHDET_PLANT": "hang:12",
               "PYTHONPATH": os.pathsep.join([str(PLANTED), env.get("PYTHONPATH", "")])}  # fmt: skip
    study = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=planted)
    deadline = time.monotonic() + 300
    pointer = out / "arms" / LONG / "checkpoints" / "last_checkpoint"
    while time.monotonic() < deadline and not (pointer.is_file() and pointer.read_text() == "model_0000010.pth"):
        time.sleep(0.1)  # the checkpoint at 10 is in place; the arm cannot get past step 12
    assert study.poll() is None, "the study ended before it could be killed"
    study.send_signal(signal.SIGKILL)  # the study process alone, as `kill -9 PID` would
    study.wait()
    deadline = time.monotonic() + 30
    while _processes_writing(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_writing(out) == [], "an arm kept running after its study was killed"
    assert not (out / "arms" / LONG / "summary.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"started arms/{LONG} (resumed)" in rerun.stderr
    for arm in (LONG, SHORT):
        ours, reference = final_weights(out / "arms" / arm), final_weights(tmp_path / "reference" / "arms" / arm)
        for name in ours:
            assert torch.equal(ours[name], reference[name]), f"{arm}: {name}"
        evaluations = [r["eval"] for r in read_metrics(out / "arms" / arm) if "eval" in r]
        expected = [r["eval"] for r in read_metrics(tmp_path / "reference" / "arms" / arm) if "eval" in r]
        assert evaluations == expected, arm
    assert (out / "report" / "report.html").is_file()
