"""Checkpoints: atomic writes, a `last_checkpoint` pointer, keep-last-N, and loading that survives bad files.

A checkpoint is `model_<iteration>.pth` holding plain tensors and containers only, so it is read back with
`torch.load(weights_only=True)` (a checkpoint cannot run code). The pointer file is rewritten after the checkpoint
is safely on disk; a crash at any instant leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write, atomic_write_text

POINTER = "last_checkpoint"
NAME = re.compile(r"^model_(\d{7})\.pth$")
log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; a full disk or other write error leaves earlier files intact and says so."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write(path, lambda file: file.write(buffer.getbuffer()))
    except OSError as exc:
        raise ScratchdetError(
            f"could not write checkpoint {path}: {exc.strerror or exc}; earlier checkpoints are intact. "
            "Free disk space, then resume with `scratchdet train --resume`"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ScratchdetError(f"checkpoint {path} not found") from None
    except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
        raise ScratchdetError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ScratchdetError(f"checkpoint {path} does not hold a scratchdet training state")
    return state


class Checkpointer:
    """Periodic checkpoints of one run in `folder`, keeping the newest `keep_last` and those of `keep_iterations`."""

    def __init__(self, folder: Path, keep_last: int = 3, keep_iterations: tuple[int, ...] = ()) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.keep_iterations = set(keep_iterations)

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"model_{iteration:07d}.pth"

    def saved(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if NAME.match(p.name))

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        path = self.path_for(iteration)
        save_checkpoint(path, state)
        atomic_write_text(self.folder / POINTER, path.name)
        for old in self.saved()[: -self.keep_last]:
            if int(NAME.match(old.name).group(1)) not in self.keep_iterations:  # type: ignore[union-attr]
                old.unlink(missing_ok=True)
        return path

    def adopt(self, source: Path) -> Path:
        """Copy another run's checkpoint file in as this run's newest (atomically, the pointer last)."""
        path = self.folder / source.name
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{source.name}.tmp"
        shutil.copyfile(source, partial)
        os.replace(partial, path)
        atomic_write_text(self.folder / POINTER, path.name)
        return path

    def latest_loadable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; a corrupt newer one is reported and skipped.

        Temporary files of writes cut short by a crash are removed first (they never became checkpoints).
        """
        partial = sorted(self.folder.glob(".*.tmp")) if self.folder.is_dir() else []
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            log.info(f"removed {len(partial)} partly written file(s) left by an interrupted checkpoint write")
        for path in reversed(self.saved()):
            try:
                return path, load_checkpoint(path)
            except ScratchdetError as exc:
                log.warning("%s; falling back to the previous checkpoint", exc)
        return None
