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


def test_the_demo_never_regenerates_data_a_study_of_it_trained_on(tmp_path: Path) -> None:
    """A demo whose data spec changed (a new calibration's size) keeps the old data while the old study is there:
    regenerating it would leave that study on data it was not trained on."""
    from dataclasses import replace

    from scratchdet.data.synthetic import SynthSpec, existing_spec

    old = SynthSpec(train_images=2, val_images=1, classification_train_per_class=0, classification_val_per_class=0)
    new = replace(old, train_images=3)
    data, out = tmp_path / "data", tmp_path / "out"
    demo.demo_data(data, old, out)
    out.mkdir()
    (out / "study.yaml").write_text("base: demo/mask_rcnn_gpu\n")
    demo.demo_data(data, old, out)  # the same spec: kept
    with pytest.raises(ScratchdetError, match=r"trained on the data in .*\(train_images 2 -> 3\): delete both"):
        demo.demo_data(data, new, out)
    assert existing_spec(data) == old
    demo.demo_data(data, new, tmp_path / "elsewhere")  # no study of it there: regenerated
    assert existing_spec(data) == new


def test_the_demo_files_hold_what_the_calibration_writes_for_their_size() -> None:
    """Each number the calibration sets is on one line, and the committed files agree with a plan of their own
    training-set size (reduced sets, periods): a hand edit of one of them fails here."""
    from scratchdet.data.synthetic import DEMO_GPU_TRAIN_IMAGES

    seeds = yaml.safe_load(gpu_demo_calibration.STUDY.read_text())["axes"]["seed"]
    plan = {"train_images": DEMO_GPU_TRAIN_IMAGES, "jobs": demo.DEMO_GPU_JOBS, "seeds": len(seeds),
            "subsets": gpu_demo_calibration.subsets(DEMO_GPU_TRAIN_IMAGES)}  # fmt: skip
    for path, pattern, replacement in gpu_demo_calibration.replacements(plan):
        lines = [m.group(0) for m in re.finditer(pattern, path.read_text(), flags=re.MULTILINE)]
        assert lines == [replacement], (path, pattern)


SPEED = {"step": 0.05, "eval100": 2.0, "startup": 0.0, "pretrain_step": 0.1, "slowdown": 1.5,
         "generate_per_scene": 0.003, "cores": 4}  # fmt: skip


def test_the_prediction_schedules_every_run_of_the_planned_study(synth_dir: Path, tmp_path: Path) -> None:
    """On one slot the predicted study is the sum of every run's steps, periodic evaluations (half a 1x apart in
    the first 1x, then 1x apart), final evaluation (500 scenes) and pre-training (7,200 images, 12 epochs of 128:
    675 steps), counted here from the plan; more slots shorten it, a third seed lengthens it."""
    with gpu_demo_calibration.demo_pretraining_size():
        plan = gpu_demo_calibration.demo_plan(400, 2, synth_dir, tmp_path)
        (pretraining,) = plan.pretrainings
        assert pretraining.iterations == 675
    # init x schedule x subset x seed; the cost-matched arm on the full set only
    assert len(plan.arms) == 2 * (2 * 4 * 3 + 1)
    one_x = 12 * 400 // 16
    steps = sum(a.iterations - a.fork_iteration for a in plan.arms)
    periodic = sum(
        sum(1 for i in range(a.fork_iteration + 1, a.iterations) if i % (one_x if i >= one_x else one_x // 2) == 0)
        for a in plan.arms
    )
    expected = steps * 0.05 + periodic * 2.0 + len(plan.arms) * 5 * 2.0 + 675 * 0.1 * 1.5
    alone = gpu_demo_calibration.predict(400, 2, 1, SPEED, synth_dir)
    assert alone["study"] == pytest.approx(expected)
    eight = gpu_demo_calibration.predict(400, 2, 8, SPEED, synth_dir)
    assert eight["study"] < alone["study"] / 3
    assert gpu_demo_calibration.predict(400, 3, 8, SPEED, synth_dir)["study"] > eight["study"]
    assert eight["total"] == pytest.approx(sum(v for k, v in eight.items() if k != "total"))
    (tmp_path / "600").mkdir()
    with gpu_demo_calibration.demo_pretraining_size():  # another size: the periods and sets its own
        other = gpu_demo_calibration.demo_plan(600, 2, synth_dir, tmp_path / "600")
    assert {(a.config.eval.period, str(a.config.eval.period_from)) for a in other.arms} == {(225, "{450: 450}")}
    assert {a.config.data.train_subset for a in other.arms} == {None, 150, 37}


def test_the_calibration_picks_the_largest_set_in_budget_and_a_third_seed_only_at_no_cost_in_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def toy(train_images: int, seeds: int, jobs: int, speed: dict[str, float], root: Path) -> dict[str, float]:
        return {"total": train_images + (50 if seeds == 3 else 0) + (10 if jobs == 4 else 0)}

    monkeypatch.setattr(gpu_demo_calibration, "predict", toy)
    measured = {1: [SPEED], 4: [SPEED] * 4, 8: [SPEED] * 8}
    plan = gpu_demo_calibration.choose(measured, 560, {}, Path())
    assert (plan["train_images"], plan["seeds"], plan["jobs"], plan["fits"]) == (500, 3, 8, True)
    assert plan["subsets"] == [125, 31]
    plan = gpu_demo_calibration.choose(measured, 520, {}, Path())
    assert (plan["train_images"], plan["seeds"], plan["jobs"]) == (500, 2, 8)
    plan = gpu_demo_calibration.choose(measured, 100, {}, Path())  # nothing fits: the smallest, said so
    assert (plan["train_images"], plan["seeds"], plan["fits"]) == (300, 2, False)


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
    """The packaged GPU study (both inits, two seeds, its base and pre-training) with a CPU-sized model, a fraction
    of an epoch as 1x, and fewer schedules and reduced sets (1x, 3x and the cost-matched arm; the whole set and
    40 of its 80 scenes): every arm trains, the cost-matched arm only on the whole set, the scratch 3x arm forks
    from it (pre-training + 3x is longer than 3x), the report judges."""
    spec = yaml.safe_load((PACKAGED / "study_gpu.yaml").read_text())
    shrink = [*tiny_training_overrides(synth_dir), f"pretrain.root={synth_dir / 'classification'}",
              "solver.base_epochs=0.6", "solver.warmup_iters=2", "eval.period=3", "eval.max_images=6",
              "output.checkpoint_period=3"]  # fmt: skip
    spec["overrides"] = [*spec["overrides"], *shrink]
    spec["axes"] = {**spec["axes"], "schedule": ["1x", "3x", "matched"], "train_subset": [None, 40]}
    spec["pretrain"] = {**spec["pretrain"], "epochs": 1, "images_per_batch": 16, "num_workers": 0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_pinned(["study", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--jobs", "2"])
    arms = sorted(p.name for p in (tmp_path / "out" / "arms").iterdir())
    assert len(arms) == 2 * (2 * 2 * 2 + 1)  # seed x (init x schedule x subset + the matched arm)
    for arm in arms:  # each job a process of its own, each computing portably like the study that started it
        summary = json.loads((tmp_path / "out" / "arms" / arm / "summary.json").read_text())
        assert summary["machine"]["arithmetic"].startswith("portable") or portable.unsupported(), arm
    matched = [a for a in arms if "matched" in a]
    assert matched == ["scratch_gn_matched_full_seed0", "scratch_gn_matched_full_seed1"]
    forks = {a: Path(json.loads(p.read_text())["run"]).name for a in arms
             if (p := tmp_path / "out" / "arms" / a / "forked_from.json").is_file()}  # fmt: skip
    assert all(a not in forks for a in matched)
    assert {forks[a] for a in arms if a.startswith("scratch_gn_3x_full")} == set(matched)
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    # The verdicts that compare trained arms rest on final evaluations (all 12 images), not the periodic ones (6);
    # finding 2's early point is a periodic one.
    assert text.count("seeds: 2 (0, 1); validation images: 12;") == 3
    assert text.count("seeds: 2 (0, 1); validation images: 6, 12;") == 1
    results = read_study(tmp_path / "out")
    for arm in results:
        assert_pinned(f"shrunk GPU study: {arm.name} box AP", arm.metric("bbox", "AP"))
    statuses = {verdict.title.split(".")[0]: verdict.label for verdict in all_verdicts(results)}
    assert statuses == PINNED_VERDICTS, statuses


def test_a_demo_on_other_scenes_keeps_to_folders_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scratchdet demo --objects/--radius` (easier scenes): its data and study beside the default demo's, named
    after the scenes, so that it neither regenerates the default data nor is refused by the default study."""
    from scratchdet.cli import main
    from scratchdet.data.synthetic import DEMO_SPEC, with_difficulty

    variant = demo.demo_variants()["cpu"]
    assert demo.demo_folders(variant, DEMO_SPEC, DEMO_SPEC) == (variant.data, variant.out)
    easy = with_difficulty(DEMO_SPEC, [1, 3], [0.25, 0.45])
    assert (easy.min_objects, easy.max_objects, easy.min_radius, easy.max_radius) == (1, 3, 0.25, 0.45)
    assert easy.categories == DEMO_SPEC.categories and easy.train_images == DEMO_SPEC.train_images
    assert demo.demo_folders(variant, easy, DEMO_SPEC) == (
        Path("data/demo_objects1-3_radius0.25-0.45"),
        Path("runs/demo_objects1-3_radius0.25-0.45"),
    )
    fewer = with_difficulty(DEMO_SPEC, [1, 3], None)
    assert demo.demo_folders(variant, fewer, DEMO_SPEC)[0] == Path("data/demo_objects1-3_radius0.16-0.45")
    asked: dict[str, Any] = {}
    monkeypatch.setattr(demo, "run_demo", lambda device, **kwargs: asked.update(kwargs))
    assert main(["demo", "--device", "cpu", "--objects", "1", "3", "--radius", "0.25", "0.45"]) == 0
    assert with_difficulty(DEMO_SPEC, asked["objects"], asked["radius"]) == easy
    assert main(["demo", "--device", "cpu"]) == 0
    assert with_difficulty(DEMO_SPEC, asked["objects"], asked["radius"]) == DEMO_SPEC
