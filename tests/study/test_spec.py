from pathlib import Path

import pytest

from scratchdet.errors import ScratchdetError
from scratchdet.study.runner import describe_plan, plan_study
from scratchdet.study.spec import read_spec

SPEC = """
base: demo/mask_rcnn
overrides: [solver.base_epochs=null, solver.images_per_batch=16]
axes:
  init: [scratch, pretrained]
  norm: [gn, syncbn]
  schedule: [1x, 3x, 6x]
  train_subset: [null, 1000]
  seed: [0, 1]
pretrain: {epochs: 5}
"""


def test_grid_expansion_with_every_axis(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    plan = plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    assert len(plan.arms) == 2 * 2 * 3 * 2 * 2
    names = {arm.name for arm in plan.arms}
    assert "scratch_gn_6x_full_seed0" in names and "pretrained_syncbn_1x_n1000_seed1" in names
    assert sorted(job.name for job in plan.pretrain_jobs) == ["resnet_narroww32d18_gn", "resnet_narroww32d18_syncbn"]
    arm = next(a for a in plan.arms if a.name == "pretrained_syncbn_1x_n1000_seed1")
    assert arm.config.model.norm == "syncbn" and arm.config.data.train_subset == 1000 and arm.config.seed == 1
    assert arm.config.model.init == str(tmp_path / "study" / "pretrain" / "resnet_narroww32d18_syncbn" / "backbone.pth")
    assert plan.pretrain_jobs[0].config.pretrain.epochs == 5
    # 1x and 3x fork from 6x at their first lr step: 60,000 and 210,000 (COCO schedules at 16 images).
    forks = {a.name: (a.fork_parent, a.fork_iteration) for a in plan.arms if a.fork_parent}
    assert forks["scratch_gn_1x_full_seed0"] == ("scratch_gn_6x_full_seed0", 60_000)
    assert forks["scratch_gn_3x_full_seed0"] == ("scratch_gn_6x_full_seed0", 210_000)
    trunk = next(a for a in plan.arms if a.name == "scratch_gn_6x_full_seed0")
    assert sorted(trunk.keep_iterations) == [60_000, 210_000]
    assert plan.iterations_saved == 16 * (60_000 + 210_000)


def test_dry_run_plan_lists_every_job_and_the_iterations_saved(tmp_path: Path, synth_dir: Path) -> None:
    spec = SPEC.replace("schedule: [1x, 3x, 6x]", "schedule: [1x, 2x]")
    spec = spec.replace("pretrain: {epochs: 5}", f"pretrain: {{epochs: 5, root: {synth_dir / 'classification'}}}")
    (tmp_path / "spec.yaml").write_text(spec)
    text = describe_plan(plan_study(tmp_path / "spec.yaml", tmp_path / "study"), measure=False)
    assert "arms/scratch_gn_2x_full_seed0" in text and "pretrain/resnet_narroww32d18_gn" in text
    assert "forked from scratch_gn_2x_full_seed0 at its first lr step (60000 iterations)" in text
    assert "forking saves 960,000 of 4,320,000 detection iterations (22%)" in text


def test_bad_spec_is_reported(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes:\n  norm: [group]\n  sched: [1x]\n")
    with pytest.raises(ScratchdetError, match=r"(?s)axes\.norm\.0.*axes\.sched: Extra inputs"):
        read_spec(tmp_path / "spec.yaml")
