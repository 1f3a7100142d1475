"""`scratchdet predict`: a trained run's detections on image files, drawn and as COCO results.

Each image is read as the evaluation reads it (8-bit RGB, normalised by the run's `data.pixel_mean` / `pixel_std`;
the model resizes it to `data.test_size` and maps its detections back to the image). Detections at or above the
score threshold are drawn (scratchdet.drawing: boxes labelled with category name and score, masks, keypoints) into
OUT/<image name>.png, from the same COCO results that go to OUT/predictions.json (image_id is the image's position
in the list, from 1; each image's `file_name` added).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from scratchdet.data.coco import load_rgb
from scratchdet.drawing import draw_items, png
from scratchdet.engine import rundir
from scratchdet.engine.detection import load_trained
from scratchdet.errors import ScratchdetError
from scratchdet.evaluation.coco import detections_of_image
from scratchdet.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PREDICTIONS = "predictions.json"


def image_files(paths: list[Path]) -> list[Path]:
    """Image files given directly or found (not recursively) in given folders, in the order given, sorted per
    folder; a missing path or a folder without images is an error naming it."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise ScratchdetError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise ScratchdetError(f"{path}: no such image file or folder")
    return found


def checkpoint_of(run_dir: Path, iteration: int | None) -> Path:
    """The run's newest loadable checkpoint (the run directory itself), or the one of `iteration`."""
    if iteration is None:
        return run_dir
    checkpoints = rundir.checkpointer(run_dir)
    path = checkpoints.path_for(iteration)
    if not path.is_file():
        kept = [p.name for p in checkpoints.saved()]
        raise ScratchdetError(f"{path}: no checkpoint of iteration {iteration}; kept: {', '.join(kept) or 'none'}")
    return path


@torch.no_grad()
def predict(run_dir: Path, images: list[Path], out: Path, score_threshold: float, iteration: int | None) -> Path:
    """Draw and save the detections of `run_dir`'s model on `images`; returns the predictions file."""
    files = image_files(images)
    trained = load_trained(checkpoint_of(Path(run_dir), iteration))
    log.info(f"predicting with {trained.path} (iteration {trained.iteration}) on {len(files)} image(s)")
    names = {c["id"]: str(c["name"]) for c in trained.categories}
    category_of_label = {i + 1: c["id"] for i, c in enumerate(trained.categories)}
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    taken: set[str] = set()  # two images of one name (from two folders) must not overwrite each other's drawing
    for number, path in enumerate(files, start=1):
        picture = F.pil_to_tensor(load_rgb(path))  # an unreadable file: an error naming it
        output = trained.model([picture.to(trained.device)])[0]
        keep = output["scores"] >= score_threshold
        kept = {key: value[keep].cpu() for key, value in output.items()}
        detections = detections_of_image(number, kept, category_of_label)
        results += [{**d, "file_name": path.name} for d in detections]
        drawn = draw_items(picture, detections, names)
        stem = path.stem if path.stem not in taken else f"{path.stem}_{number}"
        taken.add(stem)
        atomic_write_bytes(out / f"{stem}.png", png(drawn))
        log.info(f"{path}: {len(detections)} detection(s) at score {score_threshold:g} or more")
    predictions = out / PREDICTIONS
    atomic_write_text(predictions, json.dumps(results, separators=(",", ":")))
    return predictions
