"""Checkpoint faults: a full disk mid-write, and truncated or corrupt files on resume."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from scratchdet.engine.checkpoint import Checkpointer, load_checkpoint
from scratchdet.errors import ScratchdetError


def _state(value: float) -> dict:
    return {"model": {"weight": torch.full((256, 256), value)}, "iteration": int(value)}


def test_a_full_disk_during_a_write_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(10, _state(10))

    def disk_full(fd: int) -> None:  # the data reaches the disk at fsync: that is where ENOSPC surfaces
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ScratchdetError, match=r"could not write checkpoint .*model_0000020\.pth: No space left"):
        checkpointer.save(20, _state(20))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix != ""] == ["model_0000010.pth"]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    assert (tmp_path / "checkpoints" / "last_checkpoint").read_text() == "model_0000010.pth"
    path, state = checkpointer.latest_loadable()  # type: ignore[misc]
    assert path.name == "model_0000010.pth" and torch.equal(state["model"]["weight"], _state(10)["model"]["weight"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(10, _state(10))
    newest = checkpointer.save(20, _state(20))
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ScratchdetError, match=r"checkpoint .*model_0000020\.pth is unreadable or corrupt"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        path, state = checkpointer.latest_loadable()  # type: ignore[misc]
    assert path.name == "model_0000010.pth" and state["iteration"] == 10
    assert "model_0000020.pth is unreadable or corrupt" in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text
