"""The GPU demo: which demo `scratchdet demo` picks, its data moved elsewhere, the calibration tool's hold on the
demo's files, the study's jobs given the MPS server's environment, and a CPU smoke run of the GPU study shrunk by
overrides (its axes, base and pre-training as packaged)."""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from scratchdet import demo, portable
from scratchdet.config import load_config
from scratchdet.errors import ScratchdetError
from scratchdet.study import local
from scratchdet.study.findings import all_verdicts
from scratchdet.study.jobs import StudyJob
from scratchdet.study.resources import JobResources
from scratchdet.study.results import read_study
from tests.conftest import run_pinned, tiny_training_overrides
from tests.pinned import PINNED_VERDICTS, assert_pinned

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import gpu_demo_calibration

PACKAGED = Path(str(resources.files("scratchdet") / "configs" / "demo"))


def test_the_demo_is_the_gpu_one_only_where_cuda_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.demo_device("auto") == "cpu"
    with pytest.raises(ScratchdetError, match="--device cuda: PyTorch sees no CUDA device"):
        demo.demo_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.demo_device("auto") == "cuda" and demo.demo_device("cpu") == "cpu"
    variants = demo.demo_variants()
    assert variants["cuda"].study == "study_gpu.yaml" and variants["cpu"].study == "study.yaml"
    assert all((PACKAGED / v.study).is_file() for v in variants.values())
    assert variants["cuda"].data != variants["cpu"].data and variants["cuda"].out != variants["cpu"].out


def test_demo_data_elsewhere_gets_a_spec_pointed_at_it(tmp_path: Path) -> None:
    packaged = PACKAGED / "study_gpu.yaml"
    assert demo.demo_study(packaged, Path("data/demo_gpu"), tmp_path / "out", moved=False) == packaged
    spec_path = demo.demo_study(packaged, tmp_path / "mine", tmp_path / "out", moved=True)
    spec = yaml.safe_load(spec_path.read_text())
    original = yaml.safe_load(packaged.read_text())
    assert spec_path == tmp_path / "out" / "study.yaml"
    assert spec["overrides"] == [*original["overrides"], f"data.root={(tmp_path / 'mine').resolve()}",
                                 f"pretrain.root={(tmp_path / 'mine' / 'classification').resolve()}"]  # fmt: skip
    assert spec["axes"] == original["axes"] and spec["pretrain"] == original["pretrain"]
    assert demo.demo_study(packaged, tmp_path / "mine", tmp_path / "out", moved=True) == spec_path  # resumable
    with pytest.raises(ScratchdetError, match="holds a study with another spec"):
        demo.demo_study(packaged, tmp_path / "other", tmp_path / "out", moved=True)


def test_the_calibration_tool_finds_each_number_it_sets_once() -> None:
    for path, pattern, _ in gpu_demo_calibration.replacements({"train_images": 400, "jobs": 8}):
        assert len(re.findall(pattern, path.read_text(), flags=re.MULTILINE)) == 1, (path, pattern)


def test_the_predicted_time_grows_with_the_data_and_picks_the_largest_set_in_budget() -> None:
    speed = {"step": 0.13, "eval100": 3.0, "pretrain_step": 0.08, "slowdown": 1.1}
    small, large = (gpu_demo_calibration.predict(n, 8, speed)["total"] for n in (200, 400))
    # The longest chain, the matched arm: 6 x 12 epochs of 200 scenes more; its pre-training share, a fixed number
    # of iterations, spans fewer evaluation periods (half a 1x) when 1x is longer.
    pretrain = gpu_demo_calibration.PRETRAIN_AS_ITERATIONS
    fewer_evaluations = 2 * pretrain * (1 / (12 * 200 / 16) - 1 / (12 * 400 / 16))
    assert large - small == pytest.approx(6 * 12 * 200 / 16 * 0.13 - fewer_evaluations * 3.0)
    measured = {1: [{**speed, "step": 0.12}], 8: [speed] * 8}
    plan = gpu_demo_calibration.choose(measured, budget=large + 1)
    assert plan["train_images"] == 400 and plan["jobs"] == 8


def test_every_job_of_a_study_gets_the_gpu_sharing_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, command: list[str], **kwargs: Any) -> None:
            seen.append(kwargs["env"])

    monkeypatch.setattr(local.subprocess, "Popen", Recorder)
    config = load_config("demo/mask_rcnn_gpu")
    one_process = JobResources(processes=1, nodes=1, gpus=0, cpus=None)
    job = StudyJob("arms/a", "arms/a", "train", tmp_path / "arms" / "a", config, tmp_path / "a.yaml", 10, one_process)
    local._start(job, 2, {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/x/pipe"})
    assert seen[0]["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/x/pipe" and seen[0]["OMP_NUM_THREADS"] == "2"


@pytest.mark.slow
def test_the_gpu_study_shrunk_to_a_cpu_runs_every_arm_and_judges(synth_dir: Path, tmp_path: Path) -> None:
    """The packaged GPU study (both inits, 1x/3x/6x and the cost-matched arm, two seeds) with a CPU-sized model and
    a fraction of an epoch as 1x: every arm trains, the scratch 6x arm forks from the matched arm (pre-training +
    6x is longer than 6x), the report judges."""
    spec = yaml.safe_load((PACKAGED / "study_gpu.yaml").read_text())
    shrink = [*tiny_training_overrides(synth_dir), f"pretrain.root={synth_dir / 'classification'}",
              "solver.base_epochs=0.3", "solver.warmup_iters=2", "eval.period=3", "eval.max_images=6",
              "output.checkpoint_period=3"]  # fmt: skip
    spec["overrides"] = [*spec["overrides"], *shrink]
    spec["pretrain"] = {**spec["pretrain"], "epochs": 1, "images_per_batch": 16, "num_workers": 0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_pinned(["study", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--jobs", "2"])
    arms = sorted(p.name for p in (tmp_path / "out" / "arms").iterdir())
    assert len(arms) == 2 * 4 * 2 - 2  # init x schedule x seed, the matched arm from scratch only
    for arm in arms:  # each job a process of its own, each computing portably like the study that started it
        summary = json.loads((tmp_path / "out" / "arms" / arm / "summary.json").read_text())
        assert summary["machine"]["arithmetic"].startswith("portable") or portable.unsupported(), arm
    matched = [a for a in arms if not re.search(r"_(1x|3x|6x)_", a)]
    assert len(matched) == 2
    forks = {a: Path(json.loads(p.read_text())["run"]).name for a in arms
             if (p := tmp_path / "out" / "arms" / a / "forked_from.json").is_file()}  # fmt: skip
    assert all(a not in forks for a in matched)
    assert {forks[a] for a in arms if a.startswith("scratch_gn_6x")} == set(matched)
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    # The verdicts that compare rest on final evaluations (all 12 images), not the periodic ones (6)
    assert "seeds: 2 (0, 1)" in text and "validation images: 12;" in text and "validation images: 6" not in text
    results = read_study(tmp_path / "out")
    for arm in results:
        assert_pinned(f"shrunk GPU study: {arm.name} box AP", arm.metric("bbox", "AP"))
    statuses = {verdict.title.split(".")[0]: verdict.label for verdict in all_verdicts(results)}
    assert statuses == PINNED_VERDICTS, statuses
