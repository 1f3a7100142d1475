"""Atomic file writes (a reader, or a crash, never sees half a file) and exclusive locks on run directories.

Write to a temporary file in the same folder, fsync it, then rename over the target (rename is atomic on POSIX
within one filesystem), and fsync the folder so the rename itself survives a power cut.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from scratchdet.errors import ScratchdetError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_line(path: Path, line: str) -> None:
    """Append one line and make it durable before going on (a record is on disk, or is not there at all)."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def with_file_name(error: OSError, path: Path) -> OSError:
    """`error` naming `path` when it names no file (a write to a full disk does not say which file it was)."""
    return error if error.filename else OSError(error.errno, error.strerror, str(path))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise with_file_name(exc, path) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


LOCK_FILE = ".lock"  # in a run or study directory: held by the process working in it


def try_lock(path: Path) -> int | None:
    """An exclusive lock on the file `path` (created if absent, our PID written into it): its descriptor, or None
    when another process holds it.

    A POSIX record lock (`lockf`): the kernel drops it when the process ends, however it ends, so a killed run
    never leaves a stale lock behind; and unlike `flock` it is not shared with forked children (data-loader
    workers outlive a SIGKILLed parent by a few seconds and must not keep its run locked). Where `fcntl` does not
    exist (Windows) nothing is locked.
    """
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(handle)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return None
        raise
    os.ftruncate(handle, 0)
    os.write(handle, f"{os.getpid()}\n".encode())
    return handle


def lock_holder(path: Path) -> str:
    """The PID written into a lock file, or "another process" when it cannot be read."""
    try:
        return f"process {int(Path(path).read_text().split()[0])}"
    except (OSError, ValueError, IndexError):
        return "another process"


def read_json_file(path: Path, fix: str) -> Any:
    """A JSON file this tool wrote (a summary, a study's records); damaged or edited, a clear error saying `fix`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ScratchdetError(f"{path}: not readable JSON ({detail}); the file was damaged or edited: {fix}") from None
