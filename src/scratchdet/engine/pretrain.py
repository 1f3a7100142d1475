"""The pre-training arm: the detector's own backbone trained as an image classifier, through the same engine.

Architecture and normalization are read from the detection config's `model` section, so the backbone that comes
out fits the detector it will initialize (a `frozen_bn` detector is pre-trained with BN, whose statistics are then
folded into the frozen affine when loaded). The run directory holds the usual files plus `backbone.pth`:
{"model": backbone state dict, "meta": architecture, norm, epochs, val accuracy, and the images / instances
(1 per image) / pixels seen}, which `model.init: PATH/backbone.pth` accepts. Under torchrun it runs on every
process like detection training (shared batches, DDP, rank 0 writes), and each process scores its share of the
validation images.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchdet.config import Config
from scratchdet.data.batching import collate
from scratchdet.data.classification import ClassificationFolder, build_classification_transforms
from scratchdet.engine import distributed, rundir
from scratchdet.engine.accounting import SeenCounts
from scratchdet.engine.schedule import Schedule, build_classification_schedule, build_optimizer, parameter_groups
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import (
    TrainingSetup,
    batch_stream,
    default_device,
    measure_seconds_per_iteration,
    run_training,
)
from scratchdet.modeling.backbone import build_resnet, res5_features, stage_channels
from scratchdet.modeling.init import init_backbone
from scratchdet.modeling.norm import get_norm
from scratchdet.storage import atomic_write

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """Backbone body, global average pooling, one FC. Training forward → {"loss_cls"}; eval forward → logits."""

    def __init__(self, body: nn.Module, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(stage_channels(body)[-1], num_classes)
        self.label_smoothing = label_smoothing
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.fc(res5_features(self.body, torch.stack(images)).mean(dim=(2, 3)))
        if not self.training:
            return logits
        if targets is None:
            raise ValueError("a training forward needs targets")
        labels = torch.stack([t["label"] for t in targets]).to(logits.device)
        return {"loss_cls": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}


def classification_counts(images: list[torch.Tensor], targets: list[dict[str, Any]]) -> SeenCounts:
    """One instance per image (the paper's accounting for ImageNet)."""
    pixels = sum(int(image.shape[-2]) * int(image.shape[-1]) for image in images)
    return SeenCounts(images=len(images), instances=len(images), pixels=pixels)


@torch.no_grad()
def top_k_accuracy(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent, summed over the processes' shares of the loader."""
    was_training = model.training
    model.eval()
    correct = {1: 0, 5: 0}
    total = 0
    for images, targets in loader:
        logits = model([image.to(device) for image in images])
        labels = torch.stack([t["label"] for t in targets]).to(device)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct[1] += int((ranked[:, 0] == labels).sum())
        correct[5] += int((ranked == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    model.train(was_training)
    top1, top5, seen = distributed.sum_over_processes([correct[1], correct[5], total])
    return {"top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen}


def classification_iterations(config: Config) -> int:
    """Iterations the pre-training of `config` will run (scans the ImageFolder's training split)."""
    settings = config.pretrain
    transforms = build_classification_transforms(settings.image_size, 1.0, [0, 0, 0], [1, 1, 1], train=False)
    size = len(ClassificationFolder(settings.path(settings.train_dir), transforms))
    return _schedule(config, size).total_iterations


def _schedule(config: Config, dataset_size: int) -> Schedule:
    settings = config.pretrain
    return build_classification_schedule(
        epochs=settings.epochs,
        dataset_size=dataset_size,
        images_per_batch=settings.images_per_batch,
        base_lr=settings.base_lr,
        warmup_epochs=settings.warmup_epochs,
        decay=settings.decay,
    )


def pretraining_norm(norm: str) -> str:
    """FrozenBN cannot learn statistics: its backbone is pre-trained with BN (then folded when loaded)."""
    return "bn" if norm == "frozen_bn" else norm


def _save_backbone(path: Path, body: nn.Module, meta: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"model": body.state_dict(), "meta": meta}, buffer)
    atomic_write(path, lambda file: file.write(buffer.getbuffer()))


@dataclass
class PretrainingSetup:
    train_set: ClassificationFolder
    val_set: ClassificationFolder
    norm: str
    body: nn.Module
    model: Classifier
    schedule: Schedule
    optimizer: torch.optim.Optimizer


def build_pretraining(config: Config, device: torch.device) -> PretrainingSetup:
    settings, model_config = config.pretrain, config.model
    mean, std = config.data.pixel_mean, config.data.pixel_std
    train_set = ClassificationFolder(
        settings.path(settings.train_dir),
        build_classification_transforms(settings.image_size, settings.min_crop_scale, mean, std, train=True),
    )
    val_set = ClassificationFolder(
        settings.path(settings.val_dir),
        build_classification_transforms(settings.image_size, settings.min_crop_scale, mean, std, train=False),
        classes=train_set.classes,
    )
    norm = pretraining_norm(model_config.norm)
    body = build_resnet(
        model_config.backbone,
        norm=get_norm(norm, gn_groups=model_config.gn_groups, gn_eps=model_config.gn_eps),
        narrow_width=model_config.narrow_width,
        narrow_depth=model_config.narrow_depth,
        stride_in_1x1=model_config.stride_in_1x1,
    )
    init_backbone(body, model_config.zero_init_last)
    model = Classifier(body, len(train_set.classes), settings.label_smoothing).to(device)
    optimizer = build_optimizer(
        parameter_groups(model, weight_decay=settings.weight_decay, weight_decay_norm=0.0, weight_decay_bias=0.0),
        momentum=settings.momentum,
    )
    return PretrainingSetup(train_set, val_set, norm, body, model, _schedule(config, len(train_set)), optimizer)


def _batches(setup: PretrainingSetup, config: Config, start_iteration: int) -> Any:
    return batch_stream(
        setup.train_set,
        images_per_batch=config.pretrain.images_per_batch,
        seed=config.seed,
        num_workers=config.pretrain.num_workers,
        start_iteration=start_iteration,
    )


def pretraining_step_seconds(config: Config) -> float:
    """Measured seconds per pre-training iteration of `config` on this machine."""
    setup = build_pretraining(config, default_device())
    trainer = Trainer(
        setup.model,
        setup.optimizer,
        setup.schedule,
        _batches(setup, config, 0),
        device=default_device(),
        count_batch=classification_counts,
    )
    return measure_seconds_per_iteration(trainer)


def pretrain(
    config: Config, run_dir: Path, *, resume: bool = False, quiet: bool = False, stop_at: int | None = None
) -> dict[str, Any]:
    """Pre-train the backbone of `config.model` on `config.pretrain`'s ImageFolder; returns the summary."""
    return run_training(
        config,
        Path(run_dir),
        resume=resume,
        command="pretrain",
        stop_at=stop_at,
        prepare=lambda device: pretraining_setup(config, Path(run_dir), device),
    )


def pretraining_setup(config: Config, run_dir: Path, device: torch.device) -> TrainingSetup:
    """The classifier, data and evaluation of `config.pretrain`, as the training skeleton runs them; finishing
    writes the backbone file."""
    settings, model_config = config.pretrain, config.model
    setup = build_pretraining(config, device)
    train_set, norm, model = setup.train_set, setup.norm, setup.model
    if norm != model_config.norm:
        log.info(f"model.norm={model_config.norm}: pre-training with {norm} (statistics are folded when loaded)")
    val_loader = torch.utils.data.DataLoader(
        setup.val_set,
        batch_size=256,
        num_workers=min(settings.num_workers, 2),
        collate_fn=collate,
        sampler=range(distributed.rank(), len(setup.val_set), distributed.world_size()),
        generator=torch.Generator(),  # evaluating must not draw from the training run's random stream
    )

    def finish(trainer: Trainer, final: dict[str, Any] | None) -> dict[str, Any]:
        accuracy = (final or {}).get("classification", {})
        meta = {
            "kind": "backbone",
            "backbone": model_config.backbone,
            "narrow_width": model_config.narrow_width,
            "narrow_depth": model_config.narrow_depth,
            "norm": norm,
            "gn_groups": model_config.gn_groups,
            "stride_in_1x1": model_config.stride_in_1x1,
            "epochs": settings.epochs,
            "iterations": trainer.iteration,
            "image_size": settings.image_size,
            "classes": len(train_set.classes),
            "val": accuracy,
            "counts": trainer.counts.as_dict(),
        }
        backbone = run_dir / rundir.BACKBONE
        if distributed.is_main():
            _save_backbone(backbone, setup.body, meta)
        log.info(f"backbone written to {backbone} (val top-1 {accuracy.get('top1', float('nan')):.1f}%)")
        return {"final": final, "backbone": str(backbone)}

    return TrainingSetup(
        model=model,
        optimizer=setup.optimizer,
        schedule=setup.schedule,
        batches=lambda start: _batches(setup, config, start),
        evaluate=lambda iteration, final: {"classification": top_k_accuracy(model, val_loader, device)},
        eval_period=settings.eval_period,
        log_period=settings.log_period,
        checkpoint_period=settings.checkpoint_period,
        checkpoint_extra={"meta": {"kind": "pretrain"}},
        describe=lambda schedule: (
            f"pre-training {model_config.backbone} ({norm}) on {len(train_set)} images of {len(train_set.classes)} "
            f"classes: {schedule.total_iterations} iterations of {schedule.images_per_batch}, lr {schedule.base_lr:g}"
        ),
        finish=finish,
        keep_last=config.output.keep_last,
        trainer_options={"count_batch": classification_counts},
    )
