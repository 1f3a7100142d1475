"""One training run from a config, written out plainly: data, model, schedule, hooks, resume, summary.

This is the edge where a whole `Config` is taken apart into the plain arguments of the pieces below it. The run
directory it writes is the only interface to reporting:

    config.yaml          the resolved config
    metrics.jsonl        one JSON object per logged step or evaluation
    tensorboard/         the same scalars as event files
    log.txt              the log
    train_image_ids.json the images trained on (after subset and skipped items)
    skipped_items.json   what `data.skip_bad_items` dropped (only when it dropped something)
    checkpoints/         model_<iteration>.pth (newest `output.keep_last`) and `last_checkpoint`
    detections.json      the final detections, COCO results format
    evaluations/         <iteration>.json.gz: every evaluation's image ids and detections (for intervals)
    summary.json         final metrics, totals, wall time, machine — written last: its presence means "finished"

Under torchrun every process runs `train`; rank 0 alone writes these files (see `distributed.py`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from scratchdet.config import Config, apply_overrides, build_config, load_config
from scratchdet.data.batching import TrainingBatches, collate
from scratchdet.data.build import prepare_eval_dataset, prepare_train_dataset
from scratchdet.data.coco import CocoDetection, CocoIndex, read_coco_json
from scratchdet.data.transforms import (
    build_test_transforms,
    build_train_transforms,
    keypoint_flip_index,
    resized_size,
)
from scratchdet.engine import distributed
from scratchdet.engine.checkpoint import Checkpointer, load_checkpoint
from scratchdet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    MetricsHook,
    MetricsWriter,
    evaluation_file,
    truncate_metrics,
)
from scratchdet.engine.precise_bn import recompute_bn_statistics
from scratchdet.engine.schedule import Schedule, build_optimizer, build_schedule, parameter_groups
from scratchdet.engine.trainer import Trainer
from scratchdet.errors import ScratchdetError
from scratchdet.evaluation.coco import CocoEvaluator, save_evaluation
from scratchdet.evaluation.inference import run_inference
from scratchdet.io import LOCK_FILE, atomic_write_text, lock_holder, read_json_file, try_lock, with_file_name
from scratchdet.modeling.detector import build_model

log = logging.getLogger("scratchdet")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        file = _LogFile(run_dir / "log.txt", encoding="utf-8")
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


# ------------------------------------------------------------------------------------------------ data


def _train_transforms(config: Config, keypoint_names: list[str] | None = None) -> Any:
    data = config.data
    flip = keypoint_flip_index(keypoint_names) if keypoint_names else None
    return build_train_transforms(data.min_size, data.max_size, data.flip_prob, data.pixel_mean, data.pixel_std, flip)


def evaluation_tasks(arch: str) -> tuple[str, ...]:
    return {"mask_rcnn": ("bbox", "segm"), "keypoint_rcnn": ("bbox", "keypoints")}.get(arch, ("bbox",))


def keypoint_count(categories: list[dict[str, Any]]) -> int:
    """Keypoints per instance (of the first category: COCO's person); 17 when the file lists none."""
    return len(categories[0].get("keypoints") or []) or 17


def training_set_size(config: Config) -> int:
    """Images a run would train on, from the annotation file alone (no image is opened)."""
    index = CocoIndex.from_json(config.data.path(config.data.train_annotations))
    usable = [i for i in index.images if config.data.keep_empty_images or index.trainable_annotations(i)]
    return min(len(usable), config.data.train_subset or len(usable))


def mean_training_pixels(config: Config) -> float:
    """Expected input pixels of one training image: the resize rule applied to every usable image's size in the
    annotation file, averaged over the images and over `data.min_size`'s choices (no image is opened)."""
    data = config.data
    index = CocoIndex.from_json(data.path(data.train_annotations))
    usable = [i for i in index.images if data.keep_empty_images or index.trainable_annotations(i)]
    if not usable:
        raise ScratchdetError(f"{data.path(data.train_annotations)}: no usable training image")
    sizes = [(int(index.images[i]["height"]), int(index.images[i]["width"])) for i in usable]
    areas = [math.prod(resized_size(height, width, size, data.max_size))
             for height, width in sizes for size in data.min_size]  # fmt: skip
    return sum(areas) / len(areas)


def schedule_for(config: Config, dataset_size: int | None) -> Schedule:
    solver = config.solver
    return build_schedule(
        multiplier=solver.schedule_multiplier,
        images_per_batch=solver.images_per_batch,
        base_lr=solver.base_lr,
        warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor,
        base_epochs=solver.base_epochs,
        dataset_size=dataset_size,
    )


def batch_stream(
    dataset: torch.utils.data.Dataset[Any],
    *,
    images_per_batch: int,
    seed: int,
    num_workers: int,
    start_iteration: int,
    aspect_groups: list[int] | None = None,
) -> Iterator[Any]:
    """This process's share of the training batches from `start_iteration` on.

    Order, transforms and sampling depend on the seed and iteration only, not on the number of processes.
    """
    processes = distributed.world_size()
    if images_per_batch % processes:
        raise ScratchdetError(
            f"{images_per_batch} images per batch cannot be shared by {processes} processes; set the batch size "
            f"to a multiple of {processes} or run another number of processes"
        )
    sampler = TrainingBatches(
        len(dataset),  # type: ignore[arg-type]
        images_per_batch,
        seed=seed,
        aspect_groups=aspect_groups,
        start_iteration=start_iteration,
        rank=distributed.rank(),
        world_size=processes,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        # A generator of its own: creating the loader must not draw from the global random stream, or a
        # resumed run would sample RoIs differently from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    yield from loader  # the batch sampler never ends; the trainer stops pulling


def train_batches(dataset: Any, config: Config, start_iteration: int) -> Iterator[Any]:
    """The detection training batches of `config` (aspect-ratio grouped when asked)."""
    return batch_stream(
        dataset,
        images_per_batch=config.solver.images_per_batch,
        seed=config.seed,
        num_workers=config.data.num_workers,
        start_iteration=start_iteration,
        aspect_groups=dataset.aspect_groups() if config.data.group_by_aspect_ratio else None,
    )


class Evaluation:
    """The validation set, loaded once, and a callable that scores a model on it.

    With several processes each runs inference on every N-th batch of 2 (the same batches as one process, so
    padding and hence detections are identical), rank 0 gathers and scores the detections, and every process
    returns the metrics.
    """

    def __init__(self, config: Config, device: torch.device, quiet: bool = False, every_image: bool = False) -> None:
        data = config.data
        annotations = data.path(data.val_annotations)
        prepared = prepare_eval_dataset(
            annotations,
            data.path(data.val_images),
            build_test_transforms(data.pixel_mean, data.pixel_std),
            max_images=None if every_image else config.eval.max_images,
            quiet=quiet,
        )
        self.dataset = prepared.dataset
        category_of_label = {label: category for category, label in self.dataset.index.label_of_category.items()}
        tasks = evaluation_tasks(config.model.arch)
        self.evaluator = CocoEvaluator(annotations, self.dataset.image_ids, category_of_label, tasks)
        size = len(self.dataset)
        batches = [list(range(start, min(start + 2, size))) for start in range(0, size, 2)]
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches[distributed.rank() :: distributed.world_size()],
            num_workers=min(data.num_workers, 2),
            collate_fn=collate,
            generator=torch.Generator(),  # evaluating must not draw from the training run's random stream
        )
        self.device = device
        self.quiet = quiet

    def __call__(
        self, model: nn.Module, detections_path: Path | None = None, evaluation_path: Path | None = None
    ) -> dict[str, dict[str, float]]:
        run_inference(
            distributed.unwrap(model), self.loader, self.evaluator, device=self.device,
            progress=not self.quiet and distributed.is_main(), total=len(self.loader),
        )  # fmt: skip
        parts = distributed.gather_to_main(self.evaluator.detections)
        results = None
        if parts is not None:
            position = {image_id: i for i, image_id in enumerate(self.dataset.image_ids)}
            # Dataset order, as one process would have produced them (a stable sort keeps each image's order).
            self.evaluator.detections = sorted(itertools.chain(*parts), key=lambda d: position[d["image_id"]])
            if detections_path is not None:
                self.evaluator.save(detections_path)
            if evaluation_path is not None:
                save_evaluation(evaluation_path, self.dataset.image_ids, self.evaluator.detections)
            results = self.evaluator.evaluate()
        return distributed.broadcast_from_main(results)


# --------------------------------------------------------------------------------------------- training


def open_run(run_dir: Path, config: Config, *, resume: bool, command: str) -> dict[str, Any] | None:
    """Create (or reopen) a run directory and its log; the saved summary when the run has already finished.

    Every process calls it; rank 0 alone looks at and writes the directory, and tells the others.
    """
    setup_logging(None)
    finished = distributed.on_main(lambda: _open_run_directory(run_dir, config, resume, command))
    if finished is None and distributed.is_main():
        setup_logging(run_dir)
    return finished


def _open_run_directory(run_dir: Path, config: Config, resume: bool, command: str) -> dict[str, Any] | None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ScratchdetError(f"{run_dir} is not a run directory (no config.yaml); start a run with --out")
        _lock_run_directory(run_dir, command)
        if (run_dir / "summary.json").is_file():
            release_run_directory(run_dir)
            log.info(f"{run_dir} has already finished; nothing to do (its results are in summary.json)")
            fix = f"delete it and run `scratchdet {command} --resume {run_dir}` again to redo the final evaluation"
            return dict(read_json_file(run_dir / "summary.json", fix))
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_directory(run_dir, command)
    if (run_dir / "config.yaml").exists() and _never_started(run_dir):
        log.info(f"{run_dir} holds a run that never started (no checkpoint, nothing logged): starting it afresh")
    elif (run_dir / "config.yaml").exists():
        release_run_directory(run_dir)
        raise ScratchdetError(
            f"{run_dir} already holds a run; continue it with `scratchdet {command} --resume {run_dir}` "
            "or choose another --out"
        )
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    return None


def _never_started(run_dir: Path) -> bool:
    """A run directory whose start failed (a bad weight file, data that does not load): nothing in it to keep."""
    checkpoints = run_dir / "checkpoints"
    metrics = run_dir / "metrics.jsonl"
    return not (checkpoints.is_dir() and any(checkpoints.iterdir())) and not (
        metrics.is_file() and metrics.stat().st_size
    )


_held_locks: dict[Path, int] = {}  # run directory → descriptor of its lock, for as long as this process runs it


def _lock_run_directory(run_dir: Path, command: str) -> None:
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


def release_run_directory(run_dir: Path) -> None:
    handle = _held_locks.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        os.close(handle)


def resume_point(run_dir: Path, checkpointer: Checkpointer, resume: bool) -> tuple[dict[str, Any] | None, int]:
    """(checkpoint state, iteration) to continue from; metrics logged after that iteration are dropped.

    Every process reads the checkpoint itself (several nodes need `--out` on a shared file system to resume).
    """
    if not resume:
        return None, 0
    found = checkpointer.latest_loadable()
    if found is None:
        log.info("no loadable checkpoint yet: starting from the beginning")
        if distributed.is_main():
            truncate_metrics(run_dir / "metrics.jsonl", 0)
        return None, 0
    path, state = found
    if distributed.is_main():
        truncate_metrics(run_dir / "metrics.jsonl", int(state["iteration"]))
    log.info(f"resuming from {path} at iteration {state['iteration']}")
    return state, int(state["iteration"])


def finish_run(run_dir: Path, trainer: Trainer, started: float, **fields: Any) -> dict[str, Any]:
    """Write summary.json (last: its presence marks the run finished; rank 0 only) and return it."""
    summary = {
        "iteration": trainer.iteration,
        **fields,
        "counts": trainer.counts.as_dict(),
        "train_seconds": trainer.train_seconds,
        "wall_seconds_this_session": time.perf_counter() - started,
        "schedule": trainer.schedule.as_dict(),
        "machine": machine_description(),
    }
    if distributed.is_main():
        _write_json(run_dir / "summary.json", summary)
        release_run_directory(run_dir)
    return summary


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ScratchdetError(f"{run_dir} is not a run directory (no config.yaml); start a run with --out")
    return load_config(str(path))


@dataclass
class DetectionSetup:
    """Everything a detection run trains with, built from its config."""

    dataset: CocoDetection
    skipped_items: list[dict[str, Any]]
    schedule: Schedule
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pretrain_counts: dict[str, int] | None


def build_detection(config: Config, device: torch.device, quiet: bool = False) -> DetectionSetup:
    data, solver = config.data, config.solver
    prepared = prepare_train_dataset(
        data.path(data.train_annotations), data.path(data.train_images), _train_transforms(config),
        with_masks=config.model.arch == "mask_rcnn", with_keypoints=config.model.arch == "keypoint_rcnn",
        keep_empty_images=data.keep_empty_images, subset=data.train_subset, subset_seed=data.subset_seed,
        skip_bad_items=data.skip_bad_items, quiet=quiet,
    )  # fmt: skip
    dataset = prepared.dataset
    if dataset.with_keypoints:  # flips must swap left and right joints, known from the file's keypoint names
        dataset.transforms = _train_transforms(config, dataset.index.categories[0]["keypoints"])
    model, report = build_model(
        config.model, num_classes=len(dataset.index.categories), test_size=data.test_size, max_size=data.max_size,
        score_thresh=config.eval.score_thresh, detections_per_image=config.eval.detections_per_image,
        num_keypoints=keypoint_count(dataset.index.categories), pixel_mean=data.pixel_mean, pixel_std=data.pixel_std,
    )  # fmt: skip
    model.to(device, memory_format=torch.channels_last if solver.channels_last else torch.preserve_format)
    if report is not None:
        log.info(report.format())
    optimizer = build_optimizer(
        parameter_groups(model, weight_decay=solver.weight_decay, weight_decay_norm=solver.weight_decay_norm,
                         weight_decay_bias=solver.weight_decay_bias),
        momentum=solver.momentum,
    )  # fmt: skip
    return DetectionSetup(
        dataset, prepared.skipped_items, schedule_for(config, len(dataset)), model, optimizer,
        report.metadata.get("counts") if report is not None else None,
    )  # fmt: skip


def precise_bn(model: nn.Module, dataset: CocoDetection, config: Config, iteration: int, device: torch.device) -> None:
    """Recompute BN statistics over `eval.precise_bn_iterations` batches of a stream of their own.

    The stream is seeded apart from the training stream (which it must not advance) and starts at `iteration`,
    so a resumed run recomputes exactly the same statistics.
    """
    batches = batch_stream(
        dataset, images_per_batch=config.solver.images_per_batch, seed=config.seed + 1, num_workers=0,
        start_iteration=iteration,
    )  # fmt: skip
    layers = recompute_bn_statistics(model, batches, config.eval.precise_bn_iterations, device)
    if layers:
        log.info(f"precise BN: running statistics of {layers} layers recomputed over "
                 f"{config.eval.precise_bn_iterations} batches")  # fmt: skip


def measure_seconds_per_iteration(trainer: Trainer, steps: int = 4, warmup: int = 2) -> float:
    """Mean wall time of `steps` training steps after `warmup` untimed ones (for plans, not for records)."""
    for _ in range(warmup):
        trainer.run_step()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    return (time.perf_counter() - started) / steps


def detection_step_seconds(config: Config) -> float:
    """Measured seconds per training iteration of `config` on this machine."""
    setup = build_detection(config, default_device(), quiet=True)
    batches = train_batches(setup.dataset, config, 0)
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, batches, device=default_device())
    return measure_seconds_per_iteration(trainer)


def train(config: Config, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train (or continue training) the detection run in `run_dir`; returns the summary.

    Under torchrun every process calls it and the processes share each global batch.
    """
    run_dir = Path(run_dir)
    device = distributed.init_from_environment()
    finished = open_run(run_dir, config, resume=resume, command="train")
    if finished is not None:
        return finished
    started = time.perf_counter()
    seed_everything(config.seed)
    main = distributed.is_main()
    setup = build_detection(config, device, quiet or not main)
    dataset, schedule, model, pretrain = setup.dataset, setup.schedule, setup.model, setup.pretrain_counts
    if main:
        _write_json(run_dir / "train_image_ids.json", dataset.image_ids)
        if setup.skipped_items:
            _write_json(run_dir / "skipped_items.json", setup.skipped_items)
            log.info(f"skipped {len(setup.skipped_items)} bad items (listed in skipped_items.json)")

    checkpointer = Checkpointer(
        run_dir / "checkpoints", keep_last=config.output.keep_last, keep_iterations=tuple(config.output.keep_iterations)
    )
    state, start_iteration = resume_point(run_dir, checkpointer, resume)
    writer = MetricsWriter(run_dir, start_iteration) if main else None
    evaluation = Evaluation(config, device, quiet=quiet or not main)
    final_evaluation = (
        Evaluation(config, device, quiet=quiet or not main, every_image=True)
        if config.eval.final_all_images and config.eval.max_images
        else evaluation
    )

    def evaluate(iteration: int, final: bool) -> dict[str, dict[str, float]]:
        if config.eval.precise_bn_iterations:
            precise_bn(model, dataset, config, iteration, device)
        scorer = final_evaluation if final else evaluation
        return scorer(model, run_dir / "detections.json" if final else None, evaluation_file(run_dir, iteration))

    eval_hook = EvalHook(evaluate, writer, config.eval.period)
    extra = {"config": config.to_yaml(), "meta": {"kind": "detection", "pretrain": pretrain}}
    trainer = Trainer(
        distributed.wrap(model, device),
        setup.optimizer,
        schedule,
        train_batches(dataset, config, start_iteration),
        hooks=[
            eval_hook,
            *([MetricsHook(writer, config.output.log_period, pretrain)] if writer is not None else []),
            CheckpointHook(checkpointer, config.output.checkpoint_period, extra),
        ],
        clip_grad_norm=config.solver.clip_grad_norm,
        device=device,
        precision=config.solver.precision,
    )
    if state is not None:
        trainer.load_state_dict(state)
    processes = distributed.world_size()
    log.info(
        f"training {schedule.total_iterations} iterations of {schedule.images_per_batch} images "
        f"(lr {schedule.base_lr:g}, steps at {list(schedule.steps)}) on {len(dataset)} images, device {device}"
        + (f", {processes} processes of {schedule.images_per_batch // processes} images" if processes > 1 else "")
    )
    try:
        trainer.train()
    finally:
        if writer is not None:
            writer.close()
    return finish_run(
        run_dir, trainer, started, final=eval_hook.final_results, pretrain=pretrain, train_images=len(dataset)
    )


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class TrainedModel:
    """A detection checkpoint ready to run: the model (on `device`, in eval mode), its config and categories."""

    path: Path
    iteration: int
    config: Config
    categories: list[dict[str, Any]]
    model: nn.Module
    device: torch.device


def load_trained(target: Path, overrides: list[str] | None = None) -> TrainedModel:
    """A run directory's newest loadable checkpoint, or a checkpoint file, with the model its config describes."""
    target = Path(target)
    if target.is_dir():
        found = Checkpointer(target / "checkpoints").latest_loadable()
        if found is None:
            raise ScratchdetError(f"{target} has no loadable checkpoint in {target / 'checkpoints'}")
        path, state = found
    elif target.is_file():
        path, state = target, load_checkpoint(target)
    else:
        raise ScratchdetError(f"{target}: no such run directory or checkpoint file")
    if not isinstance(state.get("config"), str):
        raise ScratchdetError(f"{path} carries no config; it is not a scratchdet detection checkpoint")
    config = build_config(apply_overrides(yaml.safe_load(state["config"]), overrides or []), str(path))
    device = distributed.init_from_environment()
    categories = read_coco_json(config.data.path(config.data.val_annotations))["categories"]
    model, _ = build_model(
        config.model,
        num_classes=len(categories),
        test_size=config.data.test_size,
        max_size=config.data.max_size,
        score_thresh=config.eval.score_thresh,
        detections_per_image=config.eval.detections_per_image,
        load_init_weights=False,
        num_keypoints=keypoint_count(categories),
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ScratchdetError(f"{path}: the weights do not fit the model its config describes ({exc})") from None
    model.to(device).eval()
    return TrainedModel(path, int(state["iteration"]), config, categories, model, device)


def evaluate_saved(
    target: Path, overrides: list[str] | None = None, quiet: bool = False, detections: Path | None = None
) -> dict[str, dict[str, float]]:
    """Score a run directory's newest checkpoint, or a checkpoint file, on its config's validation set.

    `overrides` (`data.val_annotations=…`, `eval.max_images=…`) change the evaluation data or settings;
    `detections`: also write the detections there (COCO results JSON).
    """
    trained = load_trained(target, overrides)
    log.info(f"evaluating {trained.path} (iteration {trained.iteration})")
    return Evaluation(trained.config, trained.device, quiet=quiet)(trained.model, detections_path=detections)
