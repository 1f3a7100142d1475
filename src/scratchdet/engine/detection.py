"""A detection run from a config: data, model, evaluation, and the `TrainingSetup` the training skeleton
(`training.py`) runs.

This is the edge where a whole `Config` is taken apart into the plain arguments of the pieces below it. What the
run writes (`rundir.py`) is the only interface to reporting. Also here: loading a trained run's model back
(`load_trained`) for evaluation and prediction.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from scratchdet.assemble import detector_from_config, schedule_for
from scratchdet.config import Config, apply_overrides, build_config
from scratchdet.data.batching import collate
from scratchdet.data.build import prepare_eval_dataset, prepare_train_dataset
from scratchdet.data.coco import CocoDetection, CocoIndex, read_coco_json
from scratchdet.data.transforms import build_train_transforms, keypoint_flip_index, resized_size
from scratchdet.engine import distributed, rundir
from scratchdet.engine.checkpoint import load_checkpoint
from scratchdet.engine.precise_bn import recompute_bn_statistics
from scratchdet.engine.schedule import Schedule, build_optimizer, parameter_groups
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import (
    TrainingSetup,
    batch_stream,
    default_device,
    measure_seconds_per_iteration,
    run_training,
)
from scratchdet.errors import ScratchdetError
from scratchdet.evaluation.coco import CocoEvaluator, save_evaluation
from scratchdet.evaluation.inference import run_inference

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data


def _train_transforms(config: Config, keypoint_names: list[str] | None = None) -> Any:
    data = config.data
    flip = keypoint_flip_index(keypoint_names) if keypoint_names else None
    return build_train_transforms(data.min_size, data.max_size, data.flip_prob, flip)


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
    areas = [
        math.prod(resized_size(height, width, size, data.max_size)) for height, width in sizes for size in data.min_size
    ]
    return sum(areas) / len(areas)


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

    Inference runs on batches of up to `eval.images_per_batch` images of one size each (`evaluation_batches`): a
    batch pads its images to the largest, and an image's detections would then depend on its neighbours. With
    several processes each runs every N-th of the same batches, rank 0 gathers and scores the detections, and every
    process returns the metrics.
    """

    def __init__(self, config: Config, device: torch.device, quiet: bool = False, every_image: bool = False) -> None:
        data = config.data
        annotations = data.path(data.val_annotations)
        prepared = prepare_eval_dataset(
            annotations,
            data.path(data.val_images),
            None,  # test images go to the detector as they are (it resizes and normalises them)
            max_images=None if every_image else config.eval.max_images,
            quiet=quiet,
        )
        self.dataset = prepared.dataset
        category_of_label = {label: category for category, label in self.dataset.index.label_of_category.items()}
        tasks = evaluation_tasks(config.model.arch)
        self.evaluator = CocoEvaluator(annotations, self.dataset.image_ids, category_of_label, tasks)
        images = self.dataset.index.images
        sizes = [(images[i]["width"], images[i]["height"]) for i in self.dataset.image_ids]
        batches = evaluation_batches(sizes, config.eval.images_per_batch)
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
            distributed.unwrap(model),
            self.loader,
            self.evaluator,
            device=self.device,
            progress=not self.quiet and distributed.is_main(),
            total=len(self.loader),
        )
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


def evaluation_batches(sizes: list[tuple[int, int]], images_per_batch: int) -> list[list[int]]:
    """Positions 0..len(sizes)-1 of an evaluation set in batches of at most `images_per_batch`, each of one image
    size (so no image is padded), the sizes in order of first appearance, each size's images in set order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, size in enumerate(sizes):
        groups.setdefault(size, []).append(position)
    return [
        members[start : start + images_per_batch]
        for members in groups.values()
        for start in range(0, len(members), images_per_batch)
    ]


# --------------------------------------------------------------------------------------------- training


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
        data.path(data.train_annotations),
        data.path(data.train_images),
        _train_transforms(config),
        with_masks=config.model.arch == "mask_rcnn",
        with_keypoints=config.model.arch == "keypoint_rcnn",
        keep_empty_images=data.keep_empty_images,
        subset=data.train_subset,
        subset_seed=data.subset_seed,
        skip_bad_items=data.skip_bad_items,
        quiet=quiet,
    )
    dataset = prepared.dataset
    if dataset.with_keypoints:  # flips must swap left and right joints, known from the file's keypoint names
        dataset.transforms = _train_transforms(config, dataset.index.categories[0]["keypoints"])
    categories = dataset.index.categories
    model, report = detector_from_config(config, len(categories), num_keypoints=keypoint_count(categories))
    model.to(device, memory_format=torch.channels_last if solver.channels_last else torch.preserve_format)
    if solver.compile != "eager":
        # In place: the parameters and their state-dict names stay the backbone's, so checkpoints load either way.
        model.backbone.compile(mode=solver.compile)
    if report is not None:
        log.info(report.format())
    optimizer = build_optimizer(
        parameter_groups(
            model,
            weight_decay=solver.weight_decay,
            weight_decay_norm=solver.weight_decay_norm,
            weight_decay_bias=solver.weight_decay_bias,
        ),
        momentum=solver.momentum,
    )
    return DetectionSetup(
        dataset,
        prepared.skipped_items,
        schedule_for(config, len(dataset)),
        model,
        optimizer,
        report.metadata.get("counts") if report is not None else None,
    )


def precise_bn(model: nn.Module, dataset: CocoDetection, config: Config, iteration: int, device: torch.device) -> None:
    """Recompute BN statistics over `eval.precise_bn_iterations` batches of a stream of their own.

    The stream is seeded apart from the training stream (which it must not advance) and starts at `iteration`,
    so a resumed run recomputes exactly the same statistics.
    """
    batches = batch_stream(
        dataset,
        images_per_batch=config.solver.images_per_batch,
        seed=config.seed + 1,
        num_workers=0,
        start_iteration=iteration,
    )
    layers = recompute_bn_statistics(model, batches, config.eval.precise_bn_iterations, device)
    if layers:
        log.info(
            f"precise BN: running statistics of {layers} layers recomputed over "
            f"{config.eval.precise_bn_iterations} batches"
        )


def detection_step_seconds(config: Config) -> float:
    """Measured seconds per training iteration of `config` on this machine."""
    setup = build_detection(config, default_device(), quiet=True)
    batches = train_batches(setup.dataset, config, 0)
    trainer = Trainer(setup.model, setup.optimizer, setup.schedule, batches, device=default_device())
    return measure_seconds_per_iteration(trainer)


def train(
    config: Config, run_dir: Path, *, resume: bool = False, quiet: bool = False, stop_at: int | None = None
) -> dict[str, Any]:
    """Train (or continue training) the detection run in `run_dir`; returns the summary.

    Under torchrun every process calls it and the processes share each global batch.
    """
    return run_training(
        config,
        Path(run_dir),
        resume=resume,
        command="train",
        stop_at=stop_at,
        prepare=lambda device: detection_setup(config, Path(run_dir), device, quiet),
    )


def detection_setup(config: Config, run_dir: Path, device: torch.device, quiet: bool) -> TrainingSetup:
    """The detection model, data and evaluation of `config`, as the training skeleton runs them."""
    main = distributed.is_main()
    setup = build_detection(config, device, quiet or not main)
    dataset, model, pretrain = setup.dataset, setup.model, setup.pretrain_counts
    if main:
        rundir.write_json(run_dir, rundir.TRAIN_IMAGE_IDS, dataset.image_ids)
        if setup.skipped_items:
            rundir.write_json(run_dir, rundir.SKIPPED_ITEMS, setup.skipped_items)
            log.info(f"skipped {len(setup.skipped_items)} bad items (listed in {rundir.SKIPPED_ITEMS})")
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
        detections = run_dir / rundir.DETECTIONS if final else None
        return scorer(model, detections, rundir.evaluation_file(run_dir, iteration))

    def describe(schedule: Schedule) -> str:
        processes = distributed.world_size()
        return (
            f"training {schedule.total_iterations} iterations of {schedule.images_per_batch} images "
            f"(lr {schedule.base_lr:g}, steps at {list(schedule.steps)}) on {len(dataset)} images, device {device}"
            + (f", {processes} processes of {schedule.images_per_batch // processes} images" if processes > 1 else "")
        )

    return TrainingSetup(
        model=model,
        optimizer=setup.optimizer,
        schedule=setup.schedule,
        batches=lambda start: train_batches(dataset, config, start),
        evaluate=evaluate,
        eval_period=config.eval.period,
        eval_period_from=dict(config.eval.period_from),
        log_period=config.output.log_period,
        checkpoint_period=config.output.checkpoint_period,
        checkpoint_extra={"config": config.to_yaml(), "meta": {"kind": "detection", "pretrain": pretrain}},
        describe=describe,
        finish=lambda trainer, final: {"final": final, "pretrain": pretrain, "train_images": len(dataset)},
        keep_last=config.output.keep_last,
        keep_iterations=tuple(config.output.keep_iterations),
        pretrain_counts=pretrain,
        trainer_options={"clip_grad_norm": config.solver.clip_grad_norm, "precision": config.solver.precision},
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
        found = rundir.checkpointer(target).latest_loadable()
        if found is None:
            raise ScratchdetError(f"{target} has no loadable checkpoint in {target / rundir.CHECKPOINTS}")
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
    model, _ = detector_from_config(
        config, len(categories), num_keypoints=keypoint_count(categories), load_init_weights=False
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
