"""SyncBatchNorm on 2 real gloo processes against BatchNorm2d on the whole batch in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from scratchdet.modeling.norm import SyncBatchNorm

CHANNELS = 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, CHANNELS, 4, 5, generator=generator) * 3 + 1, torch.randn(
        6, CHANNELS, 4, 5, generator=generator
    )


def _affine(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    return norm


def _rank(rank: int, parts: list[int], store: str, results: dict[int, dict[str, torch.Tensor]]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    inputs, upstream = _batch()
    start = sum(parts[:rank])
    x = inputs[start : start + parts[rank]].clone().requires_grad_(True)
    norm = _affine(SyncBatchNorm(CHANNELS))
    output = norm(x)
    output.backward(upstream[start : start + parts[rank]])
    results[rank] = {"output": output.detach(), "grad_input": x.grad, "grad_weight": norm.weight.grad,
                     "grad_bias": norm.bias.grad, "running_mean": norm.running_mean,
                     "running_var": norm.running_var}  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.parametrize("parts", [[3, 3], [5, 1], [6, 0]], ids=["equal", "unequal", "one-rank-empty"])
def test_two_ranks_equal_batch_norm_on_the_whole_batch(parts: list[int], tmp_path: Path) -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(parts, str(tmp_path / "store"), results), nprocs=2, join=True)
        ranks = [dict(results[r]) for r in (0, 1)]
    inputs, upstream = _batch()
    x = inputs.clone().requires_grad_(True)
    reference = _affine(nn.BatchNorm2d(CHANNELS))
    output = reference(x)
    output.backward(upstream)
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r["output"] for r in ranks]), output.detach(), **tolerance)
    torch.testing.assert_close(torch.cat([r["grad_input"] for r in ranks]), x.grad, **tolerance)
    # Each rank holds the gradient of its own samples' loss; the whole batch's gradient is their sum.
    torch.testing.assert_close(ranks[0]["grad_weight"] + ranks[1]["grad_weight"], reference.weight.grad, **tolerance)
    torch.testing.assert_close(ranks[0]["grad_bias"] + ranks[1]["grad_bias"], reference.bias.grad, **tolerance)
    for rank in ranks:
        torch.testing.assert_close(rank["running_mean"], reference.running_mean, **tolerance)
        torch.testing.assert_close(rank["running_var"], reference.running_var, **tolerance)


def test_single_process_is_plain_batch_norm() -> None:
    inputs, _ = _batch()
    torch.testing.assert_close(_affine(SyncBatchNorm(CHANNELS))(inputs), _affine(nn.BatchNorm2d(CHANNELS))(inputs))


def test_torch_sync_batch_norm_replaces_ours_outside_the_mask_head() -> None:
    from scratchdet.modeling.norm import use_torch_sync_batch_norm

    model = nn.ModuleDict(
        {"backbone": nn.Sequential(nn.Conv2d(3, 3, 1), _affine(SyncBatchNorm(CHANNELS))),
         "roi_heads": nn.ModuleDict({"mask_head": nn.Sequential(SyncBatchNorm(CHANNELS))})}
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_torch_sync_batch_norm(model) == 1
    assert type(model["backbone"][1]) is nn.SyncBatchNorm
    assert type(model["roi_heads"]["mask_head"][0]) is SyncBatchNorm  # may see an empty batch everywhere
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
