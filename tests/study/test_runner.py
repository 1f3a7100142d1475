"""A real (tiny) study: arms as processes, a fork, resuming after losing an arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from scratchdet.config import load_config
from scratchdet.engine.detection import train
from scratchdet.study.runner import run_study
from scratchdet.study.timeline import read_timeline
from tests.conftest import final_weights, tiny_training_overrides

# At 4 images per iteration: 24 and 12 iterations; the short arm forks at its first lr step, 8.
SCHEDULES = ["0.0000666667x", "0.0000333333x"]


@pytest.fixture(scope="module")
def tiny_study(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    folder = tmp_path_factory.mktemp("study")
    overrides = [*tiny_training_overrides(synth_dir), "solver.base_epochs=null", "eval.max_images=4",
                 "eval.period=4", "output.checkpoint_period=5"]  # fmt: skip
    spec = {"base": "demo/mask_rcnn", "overrides": overrides,
            "axes": {"init": ["scratch"], "norm": ["gn"], "schedule": SCHEDULES, "seed": [0]}}  # fmt: skip
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_study(folder / "spec.yaml", folder / "out")
    return folder / "spec.yaml", folder / "out", overrides


def test_study_runs_every_arm_and_writes_the_report(tiny_study: tuple[Path, Path, list[str]]) -> None:
    _, out, _ = tiny_study
    assert sorted(p.name for p in (out / "arms").iterdir()) == ["scratch_gn_0.0000333333x_seed0",
                                                                 "scratch_gn_0.0000666667x_seed0"]  # fmt: skip
    for arm in (out / "arms").iterdir():
        assert (arm / "summary.json").is_file()
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.md").is_file()
    forked = json.loads((out / "arms" / "scratch_gn_0.0000333333x_seed0" / "forked_from.json").read_text())
    assert forked["iteration"] == 8


def test_the_report_shows_where_the_time_went(tiny_study: tuple[Path, Path, list[str]]) -> None:
    _, out, _ = tiny_study
    timeline = read_timeline(out)
    assert timeline is not None and timeline.slots == 1
    long, short = timeline.runs  # one at a time: the fork waits for its parent's end
    assert (long.run, short.run) == ("arms/scratch_gn_0.0000666667x_seed0", "arms/scratch_gn_0.0000333333x_seed0")
    assert long.exit_code == short.exit_code == 0 and long.started < long.ended <= short.started < short.ended
    # Each process's own work: every step of the parent; the fork's 4 steps after its fork at 8, not the parent's.
    assert (long.steps, len(long.evaluations)) == (24, 6)  # every 4 iterations, the last one final
    assert (short.steps, len(short.evaluations)) == (4, 1)
    for run in timeline.runs:
        assert run.training > 0 and run.evaluating > 0 and run.training + run.evaluating <= run.wall
    assert "Where the time went" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "figures" / "timeline.png").is_file()


def test_forked_arm_equals_the_same_arm_trained_from_the_start(
    tiny_study: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    _, out, overrides = tiny_study
    alone = tmp_path / "alone"
    train(load_config("demo/mask_rcnn", [*overrides, f"solver.schedule={SCHEDULES[1]}"]), alone, quiet=True)
    forked, reference = final_weights(out / "arms" / "scratch_gn_0.0000333333x_seed0"), final_weights(alone)
    assert forked.keys() == reference.keys()
    for name in forked:
        assert torch.equal(forked[name], reference[name]), name
    # What it has seen, too: the parent's counts up to the fork plus its own equal the run trained alone.
    counts = json.loads((out / "arms" / "scratch_gn_0.0000333333x_seed0" / "summary.json").read_text())["counts"]
    assert counts == json.loads((alone / "summary.json").read_text())["counts"]
    # The forked arm's record is complete: the parent's evaluations up to the fork, then its own.
    records = [json.loads(line) for line in (out / "arms" / "scratch_gn_0.0000333333x_seed0" / "metrics.jsonl").open()]
    assert [r["iteration"] for r in records if "eval" in r] == [4, 8, 12]


def test_an_interrupted_study_runs_only_what_is_missing(
    tiny_study: tuple[Path, Path, list[str]], capfd: pytest.CaptureFixture[str]
) -> None:
    spec, out, _ = tiny_study
    long_arm = out / "arms" / "scratch_gn_0.0000666667x_seed0"
    before = (long_arm / "summary.json").stat().st_mtime_ns
    short_arm = out / "arms" / "scratch_gn_0.0000333333x_seed0"
    (short_arm / "summary.json").unlink()  # as if the study had been stopped before this arm finished
    run_study(spec, out)
    assert (long_arm / "summary.json").stat().st_mtime_ns == before
    assert (short_arm / "summary.json").is_file()
    messages = capfd.readouterr().err
    assert "arms/scratch_gn_0.0000666667x_seed0: already finished, skipped" in messages
    assert "started arms/scratch_gn_0.0000333333x_seed0 (resumed)" in messages
    timeline = read_timeline(out)  # the latest call's: the short arm alone, redoing its end
    assert timeline is not None and [r.run for r in timeline.runs] == ["arms/scratch_gn_0.0000333333x_seed0"]


def test_a_study_whose_data_or_base_config_changed_is_refused_and_its_report_says_which_intervals_it_lost(
    synth_dir: Path, tmp_path: Path
) -> None:
    import shutil
    from dataclasses import replace

    from scratchdet.data.synthetic import generate
    from scratchdet.engine import rundir
    from scratchdet.errors import ScratchdetError
    from scratchdet.study.intervals import Evidence
    from scratchdet.study.results import read_study
    from tests.conftest import SMALL_SPEC

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    base = tmp_path / "base.yaml"  # the spec names a base config file: editing it leaves the spec's text unchanged
    base.write_text("_base_: demo/mask_rcnn\nsolver:\n  warmup_iters: 10\n")
    overrides = [*tiny_training_overrides(data), "solver.base_epochs=null", "eval.max_images=4", "eval.period=100"]
    overrides = [o for o in overrides if not o.startswith("solver.warmup_iters=")]
    spec = {"base": "base.yaml", "overrides": overrides,
            "axes": {"init": ["scratch"], "norm": ["gn"], "schedule": SCHEDULES, "seed": [0]}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_study(tmp_path / "spec.yaml", out)
    long, short = (out / "arms" / f"scratch_gn_{s}_seed0" for s in SCHEDULES)
    forked = tmp_path / "forked"  # a fork records its parent's data before it starts: it trains on from there
    rundir.fork(long, forked, 8, rundir.read_config(short))
    assert (forked / "data.json").read_bytes() == (long / "data.json").read_bytes()
    arms = read_study(out)
    assert Evidence(arms).samples(arms[0], "bbox", "AP", None) is not None

    base.write_text("_base_: demo/mask_rcnn\nsolver:\n  warmup_iters: 5\n")  # an edited base config
    with pytest.raises(ScratchdetError, match="other data or settings") as refused:
        run_study(tmp_path / "spec.yaml", out)
    for arm in (long, short):
        assert f"arms/{arm.name}: solver.warmup_iters: 10 -> 5" in str(refused.value)
    base.write_text("_base_: demo/mask_rcnn\nsolver:\n  warmup_iters: 10\n")
    run_study(tmp_path / "spec.yaml", out)  # as it was: nothing to do, no refusal

    generate(data, replace(SMALL_SPEC, train_images=60, val_images=10), workers=2, quiet=True)  # other sizes
    with pytest.raises(ScratchdetError) as refused:
        run_study(tmp_path / "spec.yaml", out)
    message = str(refused.value)
    for arm in (long, short):
        assert f"arms/{arm.name}: the training annotations {data}/annotations/instances_train.json changed" in message
    assert "the validation annotations" in message and "another --out" in message
    # The report of the runs as they are: the saved detections no longer match the validation set's ground truth.
    evidence = Evidence(read_study(out))
    assert evidence.samples(arms[0], "bbox", "AP", None) is None
    assert any("validation annotations" in note and "changed since" in note for note in evidence.notes)
