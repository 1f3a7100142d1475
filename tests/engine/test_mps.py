"""The private MPS server of a study's GPU jobs, with a stand-in for nvidia-cuda-mps-control that records how it
was called (the real program needs an NVIDIA driver)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from scratchdet.engine import mps

FAKE_CONTROL = """#!/usr/bin/env python3
import json, os, sys
record = {"argv": sys.argv[1:], "stdin": "" if "-d" in sys.argv else sys.stdin.read(),
          "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"), "log": os.environ.get("CUDA_MPS_LOG_DIRECTORY")}
with open(os.environ["FAKE_MPS_RECORD"], "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(int(os.environ.get("FAKE_MPS_EXIT", "0")))
"""


@pytest.fixture
def fake_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / mps.CONTROL
    program.write_text(FAKE_CONTROL)
    program.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "SYSTEM_PIPE", tmp_path / "no-system-daemon" / "control")
    return record


def _calls(record: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_a_private_server_is_started_for_the_jobs_and_stopped_after(fake_control: Path) -> None:
    assert mps.available()
    with mps.mps_server() as environment:
        assert environment is not None
        pipe = Path(environment["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir() and Path(environment["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert len(str(pipe)) < 100  # a Unix socket's path has to be short
        assert [c["argv"] for c in _calls(fake_control)] == [["-d"]]
    start, stop = _calls(fake_control)
    assert start["pipe"] == stop["pipe"] == str(pipe)  # the daemon, and the quit sent to it, use the private pipe
    assert stop["argv"] == [] and stop["stdin"] == "quit\n"
    assert not pipe.parent.exists()  # the private folder is removed once the server stopped


def test_a_server_that_will_not_start_leaves_the_jobs_time_sharing(
    fake_control: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_MPS_EXIT", "1")
    with caplog.at_level(logging.WARNING, logger="scratchdet"), mps.mps_server() as environment:
        assert environment is None
    assert "failed (exit 1" in caplog.text and "time-share" in caplog.text
    assert [c["argv"] for c in _calls(fake_control)] == [["-d"]]  # no quit for a server that never started


def test_an_mps_already_in_use_is_joined_not_replaced(fake_control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/somewhere/else")
    with mps.mps_server() as environment:
        assert environment == {}
    assert not fake_control.exists()  # the control program was never called


def test_without_the_control_program_there_is_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "SYSTEM_PIPE", tmp_path / "none" / "control")
    assert not mps.available()
    with mps.mps_server() as environment:
        assert environment is None
