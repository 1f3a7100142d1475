import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from scratchdet.cli import main
from scratchdet.data.synthetic import SynthSpec, existing_spec
from tests.conftest import tiny_coco


def test_data_check_exit_codes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tiny_coco(tmp_path)
    assert main(["data", "check", str(tmp_path / "instances.json"), "--images", str(tmp_path / "images")]) == 0
    out = capsys.readouterr().out
    assert "images                 3" in out and "0 errors, 0 warnings, 0 notes" in out
    data["annotations"][0]["bbox"] = [1, 1, 0, 0]
    (tmp_path / "instances.json").write_text(json.dumps(data))
    assert main(["data", "check", str(tmp_path / "instances.json"), "--images", str(tmp_path / "images")]) == 1
    assert "non-positive width or height" in capsys.readouterr().out


def test_user_error_is_printed_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scratchdet", "config", "show", "demo/mask_rcnn", "solver.lr=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'solver.lr'" in result.stderr and "Traceback" not in result.stderr


def test_config_show_prints_resolved_yaml(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["config", "show", "demo/mask_rcnn", "solver.schedule=6x"]) == 0
    assert "schedule: 6x" in capsys.readouterr().out


def test_synth_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    arguments = [
        "--train-images",
        "3",
        "--val-images",
        "2",
        "--classification-train-per-class",
        "1",
        "--classification-val-per-class",
        "1",
        "--workers",
        "1",
    ]
    assert main(["data", "synth", "--out", str(tmp_path / "d"), *arguments]) == 0
    assert (tmp_path / "d" / "annotations" / "instances_val.json").is_file()
    assert "wrote" in capsys.readouterr().out
    small = SynthSpec(3, 2, classification_train_per_class=1, classification_val_per_class=1)
    assert existing_spec(tmp_path / "d") == small
    easier = ["--objects", "1", "2", "--radius", "0.3", "0.4"]
    assert main(["data", "synth", "--out", str(tmp_path / "e"), *arguments, *easier]) == 0
    assert existing_spec(tmp_path / "e") == replace(small, min_objects=1, max_objects=2, min_radius=0.3, max_radius=0.4)
    assert main(["data", "synth", "--out", str(tmp_path / "c"), *arguments, "--categories", "3"]) == 0
    assert existing_spec(tmp_path / "c") == replace(small, categories=3)
    # The people generator has none of the shape scenes' options: each refused by name, nothing written.
    people = ["data", "synth", "--kind", "people", "--out", str(tmp_path / "p")]
    shape_options = [["--objects", "1", "2"], ["--radius", "0.3", "0.4"], ["--categories", "6"], arguments[4:8]]
    for options in shape_options:
        capsys.readouterr()
        assert main([*people, *options]) == 2
        refused = capsys.readouterr().err
        assert all(flag in refused for flag in options if flag.startswith("--")), refused
        assert "options of the shape scenes" in refused
    assert not (tmp_path / "p").exists()


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    import os

    from scratchdet.storage import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644


def test_model_summary_of_the_keypoint_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "summary", "demo/keypoint_rcnn"]) == 0  # a KeyError: 'keypoints' traceback before
    assert "roi heads" in capsys.readouterr().out


def test_a_config_files_base_can_be_a_packaged_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchdet.config import load_config

    (tmp_path / "mine.yaml").write_text("_base_: demo/mask_rcnn\nsolver:\n  base_lr: 0.01\n")
    config = load_config(str(tmp_path / "mine.yaml"))
    assert (
        config.solver.base_lr == 0.01 and config.model.narrow_width == load_config("demo/mask_rcnn").model.narrow_width
    )
    (tmp_path / "demo").mkdir()  # a file beside the config wins over a preset of the same name
    (tmp_path / "demo" / "mask_rcnn").write_text("solver:\n  momentum: 0.5\n")
    assert load_config(str(tmp_path / "mine.yaml")).solver.momentum == 0.5
    (tmp_path / "bad.yaml").write_text("_base_: demo/nonexistent\n")
    assert main(["config", "show", str(tmp_path / "bad.yaml")]) == 2
    assert f"{tmp_path / 'bad.yaml'}: _base_ 'demo/nonexistent': config 'demo/nonexistent'" in capsys.readouterr().err


def test_schedule_show_of_an_iteration_schedule_reads_no_training_set(capsys: pytest.CaptureFixture[str]) -> None:
    preset = "paper/mask_rcnn_R50_FPN_gn_scratch_3x"
    assert main(["schedule", "show", preset, "data.root=/nonexistent"]) == 0
    printed = capsys.readouterr().out
    assert "not read (--epochs reads it)" in printed and "note:" not in printed and "270,000" in printed
    assert main(["schedule", "show", preset, "data.root=/nonexistent", "--epochs"]) == 0
    assert "note: training set not readable" in capsys.readouterr().out
