"""`solver.compile`: a compiled backbone and FPN train as the eager ones do, and their checkpoints are the same."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch

from scratchdet.config import load_config
from scratchdet.engine.detection import build_detection, train_batches
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import seed_everything
from tests.conftest import tiny_training_overrides

# Compiling on a CPU takes minutes (a C++ compiler builds the kernels).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler"),
]


def _trained(synth_dir: Path, mode: str, steps: int) -> tuple[Trainer, list[float]]:
    overrides = [*tiny_training_overrides(synth_dir), f"solver.compile={mode}"]
    config = load_config("demo/mask_rcnn", overrides)
    seed_everything(0)
    setup = build_detection(config, torch.device("cpu"), quiet=True)
    batches = list(itertools.islice(train_batches(setup.dataset, config, 0), steps))
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, iter(batches))
    losses = []
    for _ in range(steps):
        trainer.run_step()
        losses.append(sum(trainer.last_losses.values()))
    return trainer, losses


def test_a_compiled_backbone_trains_as_the_eager_one(synth_dir: Path) -> None:
    eager, eager_losses = _trained(synth_dir, "eager", 3)
    compiled, compiled_losses = _trained(synth_dir, "default", 3)
    assert compiled.model.backbone._compiled_call_impl is not None  # compiled, in place
    # The same parameters under the same names: a checkpoint of either loads into the other.
    mine, theirs = compiled.model.state_dict(), eager.model.state_dict()
    assert mine.keys() == theirs.keys()
    # Fused kernels round differently: the same losses and weights up to that.
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-3)
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], rtol=1e-3, atol=1e-5), name
