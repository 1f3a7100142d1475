"""Precise BN: running statistics become the plain average over the batches, for BN and our SyncBN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from scratchdet.config import load_config
from scratchdet.engine.detection import train
from scratchdet.engine.precise_bn import recompute_bn_statistics
from scratchdet.modeling.norm import SyncBatchNorm
from tests.conftest import tiny_training_overrides


class _Net(nn.Module):
    def __init__(self, norm: type[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.norm = norm(3)

    def forward(self, images: list[torch.Tensor], targets: Any = None) -> torch.Tensor:
        return self.norm(torch.stack(images))


def _batches() -> list[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
    generator = torch.Generator().manual_seed(0)
    return [([torch.randn(3, 4, 4, generator=generator) * (i + 1) + i for _ in range(2)], [{}, {}]) for i in range(3)]


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, SyncBatchNorm])
def test_statistics_are_the_average_over_the_batches(norm: type[nn.BatchNorm2d]) -> None:
    net = _Net(norm)
    net.norm.running_mean.fill_(100.0)  # stale statistics from training
    net.eval()
    batches = _batches()
    assert recompute_bn_statistics(net, iter(batches), 3, torch.device("cpu")) == 1
    means = [torch.stack(images).mean(dim=(0, 2, 3)) for images, _ in batches]
    variances = [torch.stack(images).transpose(0, 1).reshape(3, -1).var(dim=1) for images, _ in batches]
    torch.testing.assert_close(net.norm.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(net.norm.running_var, torch.stack(variances).mean(0))
    assert net.norm.momentum == 0.1 and not net.training  # restored


def test_models_without_batch_norm_are_left_alone() -> None:
    net = nn.Sequential(nn.GroupNorm(1, 3))
    assert recompute_bn_statistics(net, iter([]), 5, torch.device("cpu")) == 0


def test_a_bn_run_recomputes_before_each_evaluation(synth_dir: Path, tmp_path: Path) -> None:
    overrides = [*tiny_training_overrides(synth_dir), "model.norm=bn", "eval.precise_bn_iterations=2", "eval.period=3",
                 "solver.base_epochs=null", "solver.schedule=0.0000166667x", "eval.max_images=2"]  # fmt: skip
    train(load_config("demo/mask_rcnn", overrides), tmp_path / "run", quiet=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("precise BN: running statistics of") == 2  # at iteration 3 and at the end
