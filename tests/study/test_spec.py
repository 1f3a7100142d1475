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
    assert sorted(job.name for job in plan.pretrainings) == ["resnet_narroww32d18_gn", "resnet_narroww32d18_syncbn"]
    arm = next(a for a in plan.arms if a.name == "pretrained_syncbn_1x_n1000_seed1")
    assert arm.config.model.norm == "syncbn" and arm.config.data.train_subset == 1000 and arm.config.seed == 1
    assert arm.config.model.init == str(tmp_path / "study" / "pretrain" / "resnet_narroww32d18_syncbn" / "backbone.pth")
    assert plan.pretrainings[0].config.pretrain.epochs == 5
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
    spec = spec.replace("overrides: [", f"overrides: [data.root={synth_dir}, ")
    (tmp_path / "spec.yaml").write_text(spec)
    text = describe_plan(plan_study(tmp_path / "spec.yaml", tmp_path / "study"))
    assert "arms/scratch_gn_2x_full_seed0" in text and "pretrain/resnet_narroww32d18_gn" in text
    assert "forked from scratch_gn_2x_full_seed0 at its first lr step (60000 iterations)" in text
    assert "forking saves 960,000 of 4,320,000 detection iterations (22%)" in text


def test_bad_spec_is_reported(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes:\n  norm: [group]\n  sched: [1x]\n")
    with pytest.raises(ScratchdetError, match=r"(?s)axes\.norm\.0.*axes\.sched: Extra inputs"):
        read_spec(tmp_path / "spec.yaml")


def test_a_matched_scratch_arm_sees_the_pixels_of_pre_training_plus_the_longest_fine_tuning(
    synth_dir: Path, tmp_path: Path
) -> None:
    """`matched` matches pre-training + the fine-tuning at the longest schedule (the one most likely converged, which
    finding 2 compares with); `matched@1x` matches the fine-tuning at 1x."""
    import json
    import math

    (tmp_path / "spec.yaml").write_text(f"""
base: demo/mask_rcnn
overrides: [data.root={synth_dir}, solver.base_epochs=1, solver.images_per_batch=4,
            pretrain.root={synth_dir / "classification"}]
axes: {{init: [scratch, pretrained], schedule: [1x, 2x, matched, matched@1x]}}
pretrain: {{epochs: 2, images_per_batch: 16, image_size: 32}}
""")
    plan = plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    assert sorted(a.name for a in plan.arms) == ["pretrained_gn_1x_seed0", "pretrained_gn_2x_seed0",
                                                 "scratch_gn_1x_seed0", "scratch_gn_2x_seed0",
                                                 "scratch_gn_matched-1x_seed0", "scratch_gn_matched_seed0"]  # fmt: skip
    # Counted here without scratchdet's helpers: 24 classes x 2 images, 2 epochs of 16 -> 6 iterations of 32 x 32;
    # 80 training images, 1x = 20 iterations of 4; shorter side to 96, longer at most 128.
    pretrain_pixels = round(2 * 48 / 16) * 16 * 32 * 32
    images = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())["images"]
    scales = [min(96 / min(i["height"], i["width"]), 128 / max(i["height"], i["width"])) for i in images]
    area = sum(int(i["height"] * s) * int(i["width"] * s) for i, s in zip(images, scales, strict=True)) / len(images)
    for name, finetune in (("scratch_gn_matched_seed0", 40), ("scratch_gn_matched-1x_seed0", 20)):
        expected = math.ceil(finetune + pretrain_pixels / (4 * area))
        matched = next(a for a in plan.arms if a.name == name)
        assert matched.iterations == expected and matched.config.model.init == "scratch" and matched.pretrain is None
        assert f"cost-matched: {expected:,} iterations" in describe_plan(plan)
    assert f"fine-tuning at 2x {40 * 4 * area:,.0f} (40 iterations)" in describe_plan(plan)


def test_a_matched_arm_is_planned_on_the_full_training_set_only(tmp_path: Path, synth_dir: Path) -> None:
    """Finding 2 reads cost-matched arms on the full set; reduced sets get none (each would cost a pre-training's
    worth of iterations). Without the whole set, the largest subset is the full one."""
    spec = SPEC.replace("schedule: [1x, 3x, 6x]", "schedule: [1x, 6x, matched]")
    spec = spec.replace("norm: [gn, syncbn]", "norm: [gn]")
    spec = spec.replace("pretrain: {epochs: 5}", f"pretrain: {{epochs: 5, root: {synth_dir / 'classification'}}}")
    spec = spec.replace("overrides: [", f"overrides: [data.root={synth_dir}, ")
    (tmp_path / "spec.yaml").write_text(spec)
    matched = [a.name for a in plan_study(tmp_path / "spec.yaml", tmp_path / "study").arms if "matched" in a.name]
    assert matched == ["scratch_gn_matched_full_seed0", "scratch_gn_matched_full_seed1"]
    (tmp_path / "spec.yaml").write_text(spec.replace("train_subset: [null, 1000]", "train_subset: [300, 1000]"))
    matched = [a.name for a in plan_study(tmp_path / "spec.yaml", tmp_path / "other").arms if "matched" in a.name]
    assert matched == ["scratch_gn_matched_n1000_seed0", "scratch_gn_matched_n1000_seed1"]


def test_matched_needs_a_pretrained_arm_and_a_schedule_to_match(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes: {init: [scratch], schedule: [1x, matched]}\n")
    with pytest.raises(ScratchdetError, match=r"add pretrained to axes\.init"):
        plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes: {schedule: [matched]}\n")
    with pytest.raises(ScratchdetError, match="list one too"):
        plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes: {schedule: [1x, matched@3x]}\n")
    with pytest.raises(ScratchdetError, match=r"3x is not one of \['1x'\]"):
        plan_study(tmp_path / "spec.yaml", tmp_path / "study")


def test_pretraining_once_per_seed_when_the_spec_asks(synth_dir: Path, tmp_path: Path) -> None:
    """`pretrain: {per_seed: true}`: each seed's pre-trained arms start from a pre-training of that seed, so the
    seeds' spread holds pre-training's variance too; by default one pre-training serves every seed."""
    spec = f"""
base: demo/mask_rcnn
overrides: [data.root={synth_dir}, pretrain.root={synth_dir / "classification"}]
axes: {{init: [scratch, pretrained], schedule: [1x], seed: [0, 1]}}
pretrain: {{epochs: 2EXTRA}}
"""
    (tmp_path / "spec.yaml").write_text(spec.replace("EXTRA", ""))
    shared = plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    assert [(j.name, j.config.seed) for j in shared.pretrainings] == [("resnet_narroww32d18_gn", 0)]
    (tmp_path / "spec.yaml").write_text(spec.replace("EXTRA", ", per_seed: true"))
    plan = plan_study(tmp_path / "spec.yaml", tmp_path / "study2")
    jobs = [(j.name, j.config.seed, j.config.pretrain.epochs) for j in plan.pretrainings]
    assert jobs == [("resnet_narroww32d18_gn_seed0", 0, 2), ("resnet_narroww32d18_gn_seed1", 1, 2)]
    starts = {a.name: a.pretrain for a in plan.arms if a.pretrain}
    assert starts == {"pretrained_gn_1x_seed0": "resnet_narroww32d18_gn_seed0",
                      "pretrained_gn_1x_seed1": "resnet_narroww32d18_gn_seed1"}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(spec.replace("EXTRA", ", per_seed: 2"))
    with pytest.raises(ScratchdetError, match="per_seed: true"):
        plan_study(tmp_path / "spec.yaml", tmp_path / "study3")


def test_matched_arms_for_published_weights_of_known_cost(synth_dir: Path, tmp_path: Path) -> None:
    """`matched` is matched to each pre-trained init of known cost: the study's own pre-training and a weight file
    whose pre-training the spec gives (pixels = images x epochs x size²); a file of unknown cost gets none."""
    (tmp_path / "in.pth").write_bytes(b"")  # planning does not read weight files
    (tmp_path / "unknown.pth").write_bytes(b"")
    common = f"""
base: demo/mask_rcnn
overrides: [data.root={synth_dir}, solver.base_epochs=1, solver.images_per_batch=4,
            pretrain.root={synth_dir / "classification"}]
pretrain: {{epochs: 2, images_per_batch: 16, image_size: 32}}
weights:
  imagenet: {{path: in.pth, pretrain: {{dataset: tiny, images_per_epoch: 100, epochs: 3, input_size: 64}}}}
  mystery: unknown.pth
"""
    (tmp_path / "spec.yaml").write_text(common + "axes: {init: [scratch, pretrained, imagenet, mystery], "
                                        "schedule: [1x, matched]}\n")  # fmt: skip
    plan = plan_study(tmp_path / "spec.yaml", tmp_path / "study")
    matched = {a.name: a for a in plan.arms if "matched" in a.name}
    assert sorted(matched) == ["scratch_gn_matched-imagenet_seed0", "scratch_gn_matched-pretrained_seed0"]
    own, published = matched["scratch_gn_matched-pretrained_seed0"], matched["scratch_gn_matched-imagenet_seed0"]
    assert "pre-training (imagenet) 1,228,800 +" in published.cost  # 100 x 3 images of 64 x 64
    assert "pre-training (pretrained) " in own.cost and own.iterations != published.iterations
    assert all(a.config.model.init == "scratch" and a.pretrain is None for a in matched.values())

    (tmp_path / "spec.yaml").write_text(common + "axes: {init: [scratch, imagenet], schedule: [1x, matched]}\n")
    only = [a for a in plan_study(tmp_path / "spec.yaml", tmp_path / "study").arms if "matched" in a.name]
    assert [a.name for a in only] == ["scratch_gn_matched_seed0"] and only[0].iterations == published.iterations

    (tmp_path / "spec.yaml").write_text(common + "axes: {init: [scratch, mystery], schedule: [1x, matched]}\n")
    with pytest.raises(ScratchdetError, match="a weight-file init whose pre-training cost is known"):
        plan_study(tmp_path / "spec.yaml", tmp_path / "study")
