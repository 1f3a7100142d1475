"""The pre-training arm end to end: classification pre-training, then fine-tuning from its backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scratchdet.config import load_config
from scratchdet.data.synthetic import SynthSpec, classification_classes, generate
from scratchdet.engine.detection import train
from scratchdet.engine.rundir import read_metrics
from scratchdet.errors import ScratchdetError
from tests.conftest import run_pinned, tiny_training_overrides
from tests.engine.test_faults import KILL_AT
from tests.pinned import assert_pinned

CHANCE = 100 / len(classification_classes())
PRETRAIN = ["pretrain.image_size=48", "pretrain.epochs=8", "pretrain.images_per_batch=32", "pretrain.base_lr=0.4",
            "pretrain.num_workers=0", "pretrain.warmup_epochs=0.5", "pretrain.log_period=10"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> Path:
    data = tmp_path_factory.mktemp("cls") / "data"
    generate(data, SynthSpec(train_images=0, val_images=0, classification_train_per_class=40,
                             classification_val_per_class=10), workers=2, quiet=True)  # fmt: skip
    run = tmp_path_factory.mktemp("pre") / "run"
    overrides = [*tiny_training_overrides(synth_dir), f"pretrain.root={data / 'classification'}", *PRETRAIN]
    run_pinned(["pretrain", "--out", str(run), "demo/mask_rcnn", *overrides])
    return run


def test_pretraining_reaches_far_above_chance(pretrained: Path) -> None:
    summary = json.loads((pretrained / "summary.json").read_text())
    top1 = summary["final"]["classification"]["top1"]
    print(f"pre-training top-1 {top1:.1f}% (chance {CHANCE:.1f}%)")
    assert top1 > 3 * CHANCE
    assert_pinned("pretraining top-1", top1)
    assert summary["counts"]["images"] == summary["counts"]["instances"] == summary["iteration"] * 32
    assert summary["counts"]["pixels"] == summary["counts"]["images"] * 48 * 48


def test_backbone_loads_into_the_detector_and_its_counts_flow_into_fine_tuning(
    pretrained: Path, synth_dir: Path, tmp_path: Path
) -> None:
    backbone = pretrained / "backbone.pth"
    overrides = [*tiny_training_overrides(synth_dir), f"model.init={backbone}", "solver.base_epochs=null",
                 "solver.schedule=0.0000333333x", "eval.max_images=2"]  # fmt: skip
    summary = train(load_config("demo/mask_rcnn", overrides), tmp_path / "fine", quiet=True)
    pre = json.loads((pretrained / "summary.json").read_text())
    assert summary["pretrain"] == pre["counts"]
    assert read_metrics(tmp_path / "fine")[0]["pretrain"] == pre["counts"]
    log = (tmp_path / "fine" / "log.txt").read_text()
    assert "tensors loaded" in log and "missing" not in log


@pytest.mark.parametrize(("override", "complaint"), [("model.narrow_width=8", "shape mismatches"),
                                                     ("model.norm=bn", "norm mismatches"),
                                                     ("model.gn_groups=4", "gn_groups: file 8, config 4")])  # fmt: skip
def test_backbone_of_another_width_or_norm_is_refused(
    pretrained: Path, synth_dir: Path, tmp_path: Path, override: str, complaint: str
) -> None:
    overrides = [*tiny_training_overrides(synth_dir), f"model.init={pretrained / 'backbone.pth'}", override]
    with pytest.raises(ScratchdetError, match=complaint):
        train(load_config("demo/mask_rcnn", overrides), tmp_path / "refused", quiet=True)


def test_killed_pretraining_resumes_to_the_same_backbone(pretrained: Path, synth_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import torch

    config = yaml.safe_load((pretrained / "config.yaml").read_text())
    config["pretrain"].update(epochs=1, checkpoint_period=5, num_workers=1, log_period=1)
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "scratchdet", "pretrain", str(tmp_path / "pre.yaml"), "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([*command, str(tmp_path / "reference")], check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    # SIGKILLed by a planted fault at its 12th optimizer step: past the checkpoint at 10.
    planted = [sys.executable, str(KILL_AT), "step", "12", *command[3:], str(killed)]
    died = subprocess.run(planted, capture_output=True, env=env, check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (killed / "summary.json").exists()
    subprocess.run([sys.executable, "-m", "scratchdet", "pretrain", "--resume", str(killed)], check=True,
                   capture_output=True, env=env)  # fmt: skip
    ours = torch.load(killed / "backbone.pth", weights_only=True)
    theirs = torch.load(tmp_path / "reference" / "backbone.pth", weights_only=True)
    assert ours["meta"]["counts"] == theirs["meta"]["counts"]
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
