import json
import subprocess
import sys
from pathlib import Path

from scratchdet.cli import main
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


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    import os

    from scratchdet.io import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644
