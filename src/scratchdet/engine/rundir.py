"""The run directory: the one interface between training and reporting, and the only module that knows its layout.

    config.yaml          the resolved config
    metrics.jsonl        one JSON object per logged step or evaluation
    tensorboard/         the same scalars as event files
    log.txt              the log
    train_image_ids.json the images trained on (after subset and skipped items)
    data.json            a digest of the data it trains and evaluates on (`data_record`): a resumed run, or a
                         study continuing it, refuses data that changed since it started
    skipped_items.json   what `data.skip_bad_items` dropped (only when it dropped something)
    checkpoints/         model_<iteration>.pth (newest `output.keep_last`) and `last_checkpoint`
    detections.json      the final detections, COCO results format (detection runs)
    evaluations/         <iteration>.json.gz: every evaluation's image ids and detections (for intervals)
    backbone.pth         the pre-trained backbone (pre-training runs)
    forked_from.json     the run and iteration a study's arm started from (arms forked from a longer one)
    summary.json         final metrics, totals, wall time, machine — written last: its presence means "finished"

Training opens a directory (`open_run`: create or reopen, lock, log), finds where to continue (`resume_point`) and
finishes it (`finish_run`); the study runner, the results reader and the report read it through the functions
below. Under torchrun rank 0 alone writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scratchdet import portable
from scratchdet.config import Config, load_config, read_yaml_mapping
from scratchdet.engine import distributed
from scratchdet.engine.checkpoint import Checkpointer
from scratchdet.errors import ScratchdetError
from scratchdet.storage import (
    LOCK_FILE,
    atomic_write_bytes,
    atomic_write_text,
    lock_holder,
    read_json_file,
    try_lock,
    with_file_name,
)

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOG = "log.txt"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
DETECTIONS = "detections.json"
EVALUATIONS = "evaluations"
TRAIN_IMAGE_IDS = "train_image_ids.json"
SKIPPED_ITEMS = "skipped_items.json"
BACKBONE = "backbone.pth"
FORKED_FROM = "forked_from.json"
DATA = "data.json"

# A summary is written last, atomically: a damaged one is redone by resuming the finished run.
_REDO = "delete it and run `scratchdet {command} --resume {run_dir}` to redo the final evaluation and write it again"


# ------------------------------------------------------------------------------------------------ reading


def is_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run (started, perhaps finished)."""
    return (Path(run_dir) / CONFIG).is_file()


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def read_config(run_dir: Path) -> Config:
    if not is_run(run_dir):
        raise ScratchdetError(f"{run_dir} is not a run directory (no {CONFIG}); start a run with --out")
    return load_config(str(Path(run_dir) / CONFIG))


def read_config_mapping(run_dir: Path) -> dict[str, Any]:
    """The saved config as written, without validation (a report reads runs of older versions too)."""
    return read_yaml_mapping(Path(run_dir) / CONFIG)


def read_summary(run_dir: Path, command: str = "train") -> dict[str, Any] | None:
    """The summary of a finished run; None while it is not finished. A damaged one is an error naming the fix."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    return dict(read_json_file(path, _REDO.format(command=command, run_dir=run_dir)))


def checkpointer(run_dir: Path, keep_last: int = 0, keep_iterations: tuple[int, ...] = ()) -> Checkpointer:
    return Checkpointer(Path(run_dir) / CHECKPOINTS, keep_last=keep_last, keep_iterations=keep_iterations)


def checkpoint_file(run_dir: Path, iteration: int) -> Path:
    return checkpointer(run_dir).path_for(iteration)


def evaluation_file(run_dir: Path, iteration: int) -> Path:
    """Where the evaluation at `iteration` keeps its image ids and detections."""
    return Path(run_dir) / EVALUATIONS / f"{iteration:07d}.json.gz"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of the run's metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    path = Path(run_dir) / METRICS
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):  # torn, or not a record this tool wrote
            continue
    return records


def last_logged_iteration(run_dir: Path, default: int = 0) -> int:
    """The iteration of the newest complete record, reading only the end of the file (it is polled often)."""
    try:
        with open(Path(run_dir) / METRICS, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 8192))
            lines = file.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return default
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError, RecursionError):
            continue  # a torn last line, or the cut first line of the window
    return default


# ------------------------------------------------------------------------------------------------ writing


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def truncate_metrics(run_dir: Path, iteration: int) -> None:
    """Keep only the records up to `iteration` (those after it are redone by a resumed run), less the final
    evaluation's: it comes after the last checkpoint, and a resumed run always redoes it."""
    kept = [r for r in read_metrics(run_dir) if r.get("iteration", 0) <= iteration and not r.get("final")]
    write_metrics(run_dir, kept)


def write_json(run_dir: Path, name: str, data: Any) -> None:
    atomic_write_text(Path(run_dir) / name, json.dumps(data, indent=2) + "\n")


def write_config(run_dir: Path, config: Config) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, config.to_yaml())


def fork(parent: Path, child: Path, iteration: int, config: Config) -> None:
    """Start `child` where `parent` was at `iteration`: its checkpoint, metrics and saved evaluations up to there
    (the parent's evaluations before the fork are the child's too), `forked_from.json`, and config.yaml last — a
    fork cut short is not a run yet and is redone."""
    checkpointer(child).adopt(checkpoint_file(parent, iteration))
    records = [r for r in read_metrics(parent) if r.get("iteration", 0) <= iteration]
    for record in records:
        source = evaluation_file(parent, record["iteration"])
        if "eval" in record and source.is_file():
            atomic_write_bytes(evaluation_file(child, record["iteration"]), source.read_bytes())
    write_metrics(child, records)
    if (Path(parent) / DATA).is_file():  # the child goes on from the parent's data, and checks it is unchanged
        atomic_write_bytes(Path(child) / DATA, (Path(parent) / DATA).read_bytes())
    write_json(child, FORKED_FROM, {"run": str(parent), "iteration": iteration})
    write_config(child, config)


# ------------------------------------------------------------------------------------------------ its data


def data_record(config: Config, command: str) -> dict[str, dict[str, str]]:
    """What a run's results depend on besides its config: the data it trains and evaluates on, each as its path
    and a digest of its content — the annotation files of a detection run, the image lists of a pre-training.
    Moved data (same digest, another path) is the same data."""
    if command == "pretrain":
        pretrain = config.pretrain
        folders = {"classification training images": pretrain.path(pretrain.train_dir),
                   "classification validation images": pretrain.path(pretrain.val_dir)}  # fmt: skip
        return {what: {"path": str(path), "sha1": _folder_digest(path)} for what, path in folders.items()}
    data = config.data
    files = {"training annotations": data.path(data.train_annotations),
             "validation annotations": data.path(data.val_annotations)}  # fmt: skip
    return {what: {"path": str(path), "sha1": file_digest(path)} for what, path in files.items()}


MISSING = "missing"  # the digest of data that is not there


def file_digest(path: Path) -> str:
    """SHA-1 of a file's content (MISSING when it is not there)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return MISSING
    return _digest(Path(path).resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: Path, size: int, modified: int) -> str:  # size and time: a rewritten file is read again
    hasher = hashlib.sha1()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def _folder_digest(folder: Path) -> str:
    """SHA-1 of the sorted relative paths of every file under `folder`: an image folder's classes and images,
    listed without opening or even stat-ing them (a million-image folder is listed in seconds)."""
    if not Path(folder).is_dir():
        return MISSING
    entries = sorted(
        Path(directory, name).relative_to(folder).as_posix()
        for directory, _, names in os.walk(folder)
        for name in names
    )
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def data_changes(run_dir: Path, record: dict[str, dict[str, str]]) -> list[str]:
    """How `record` (the data now) differs from the data `run_dir` started on; empty when it does not, or when the
    run predates these records."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return []
    saved = read_json_file(path, f"delete it to accept the data as it is now for {run_dir}")
    changes = []
    for what, now in record.items():
        then = saved.get(what) if isinstance(saved, dict) else None
        if not isinstance(then, dict) or then.get("sha1") == now["sha1"]:
            continue
        moved = f" (then {then.get('path')})" if then.get("path") != now["path"] else ""
        happened = "is missing" if now["sha1"] == MISSING else "changed since it started"
        changes.append(f"the {what} {now['path']}{moved} {happened}")
    return changes


def keep_data_record(run_dir: Path, record: dict[str, dict[str, str]], *, resume: bool) -> None:
    """Save the data a run trains on when it starts; when it resumes, refuse data changed since: one run trained
    on two datasets (or evaluated on another validation set than its earlier evaluations) is a silent wrong
    result. Rank 0's work (`distributed.on_main`)."""
    changes = data_changes(run_dir, record) if resume else []
    if changes:
        raise ScratchdetError(
            f"{run_dir}: {'; '.join(changes)}: continuing would mix two datasets in one run. Restore the data it "
            "started on, or start a new run with --out"
        )
    if not resume or not (Path(run_dir) / DATA).is_file():
        write_json(run_dir, DATA, record)


# ------------------------------------------------------------------------------------------------ a run's life


def setup_logging(run_dir: Path | None) -> None:
    """INFO lines to stderr and, for a run, to run_dir/log.txt; ranks other than 0 print warnings only."""
    logger = logging.getLogger("scratchdet")
    logger.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    prefix = f"[rank {distributed.rank()}] " if distributed.is_distributed() else ""
    console.setFormatter(logging.Formatter(prefix + "%(message)s"))
    logger.addHandler(console)
    if run_dir is not None:
        file = _LogFile(Path(run_dir) / LOG, encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file)


class _LogFile(logging.FileHandler):
    """log.txt, whose write errors (a full disk) stop the run like any other write's, instead of being printed as a
    logging traceback and ignored."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise with_file_name(error, Path(self.baseFilename)) from None
        super().handleError(record)


def open_run(run_dir: Path, config: Config, *, resume: bool, command: str) -> dict[str, Any] | None:
    """Create (or reopen) a run directory and its log; the saved summary when the run has already finished.

    Every process calls it; rank 0 alone looks at and writes the directory, and tells the others.
    """
    setup_logging(None)
    finished = distributed.on_main(lambda: _open(Path(run_dir), config, resume, command))
    if finished is None and distributed.is_main():
        setup_logging(run_dir)
    return finished


def _open(run_dir: Path, config: Config, resume: bool, command: str) -> dict[str, Any] | None:
    if resume:
        if not is_run(run_dir):
            raise ScratchdetError(f"{run_dir} is not a run directory (no {CONFIG}); start a run with --out")
        _lock(run_dir, command)
        if is_finished(run_dir):
            release(run_dir)
            log.info(f"{run_dir} has already finished; nothing to do (its results are in {SUMMARY})")
            return read_summary(run_dir, command)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock(run_dir, command)
    if is_run(run_dir) and _never_started(run_dir):
        log.info(f"{run_dir} holds a run that never started (no checkpoint, nothing logged): starting it afresh")
    elif is_run(run_dir):
        release(run_dir)
        raise ScratchdetError(
            f"{run_dir} already holds a run; continue it with `scratchdet {command} --resume {run_dir}` "
            "or choose another --out"
        )
    write_config(run_dir, config)
    return None


def _never_started(run_dir: Path) -> bool:
    """A run directory whose start failed (a bad weight file, data that does not load): nothing in it to keep."""
    checkpoints, metrics = run_dir / CHECKPOINTS, run_dir / METRICS
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    return not has_checkpoints and not (metrics.is_file() and metrics.stat().st_size)


_held_locks: dict[Path, int] = {}  # run directory → descriptor of its lock, for as long as this process runs it


def _lock(run_dir: Path, command: str) -> None:
    """Refuse a second process writing into `run_dir` (a duplicate --resume, an arm left over from a killed study).

    Held until `finish_run` or the end of the process; a process may reopen a run it already holds.
    """
    key = run_dir.resolve()
    if key in _held_locks:
        return
    handle = try_lock(run_dir / LOCK_FILE)
    if handle is None:
        raise ScratchdetError(
            f"{run_dir} is in use by {lock_holder(run_dir / LOCK_FILE)} (it holds {run_dir / LOCK_FILE}); wait "
            f"for it to end or stop it, then continue with `scratchdet {command} --resume {run_dir}`"
        )
    _held_locks[key] = handle


def release(run_dir: Path) -> None:
    handle = _held_locks.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        os.close(handle)


def resume_point(run_dir: Path, checkpoints: Checkpointer, resume: bool) -> tuple[dict[str, Any] | None, int]:
    """(checkpoint state, iteration) to continue from; metrics logged after that iteration are dropped.

    Every process reads the checkpoint itself (several nodes need `--out` on a shared file system to resume).
    """
    if not resume:
        return None, 0
    found = checkpoints.latest_loadable()
    if found is None:
        log.info("no loadable checkpoint yet: starting from the beginning")
        if distributed.is_main():
            truncate_metrics(run_dir, 0)
        return None, 0
    path, state = found
    if distributed.is_main():
        truncate_metrics(run_dir, int(state["iteration"]))
    log.info(f"resuming from {path} at iteration {state['iteration']}")
    return state, int(state["iteration"])


def finish_run(run_dir: Path, summary: dict[str, Any], started: float) -> dict[str, Any]:
    """Write summary.json (last: its presence marks the run finished; rank 0 only), with the session's wall time
    and the machine added, and return it."""
    summary = {**summary, "wall_seconds_this_session": time.perf_counter() - started, "machine": machine_description()}
    if distributed.is_main():
        write_json(run_dir, SUMMARY, summary)
        release(run_dir)
    return summary


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "arithmetic": portable.description(),
        "processes": distributed.world_size(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
