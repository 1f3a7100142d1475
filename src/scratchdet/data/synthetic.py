"""Generated data: cluttered shape scenes in COCO format, and an ImageFolder classification set.

The detection set has one category per shape; colour, texture, scale, aspect, rotation and occlusion vary freely,
so only the outline identifies the category. The classification set (the stand-in for ImageNet) has more
categories — shape × texture — over single, centred objects: related to the detection task, not the same.

Every image is a pure function of (seed, split, index), so the output is byte-identical for a seed however many
worker processes draw it. Objects lie inside the image and keep at least 60% of their area visible; masks are
exactly the painted pixels that stay visible after later objects are drawn over them; boxes are the tight boxes of
those masks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_utils
from PIL import Image, ImageDraw
from tqdm import tqdm

from scratchdet.data import DEFAULT_CLASSIFICATION_PER_CLASS, DEFAULT_OBJECTS, DEFAULT_RADIUS, DETECTION_SHAPES
from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write_text

CLASSIFICATION_SHAPES = (*DETECTION_SHAPES, "pentagon", "rhombus")
TEXTURES = ("solid", "stripes", "dots")
SPLIT_CODES = {"train": 1, "val": 2, "classification/train": 3, "classification/val": 4}
MIN_VISIBLE_FRACTION = 0.6  # every object keeps at least this fraction of its area visible
PLACEMENT_TRIES = 8
MIN_VISIBLE_PIXELS = 12


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a generated dataset; saved as `synth.json` beside it."""

    train_images: int = 2000
    val_images: int = 300
    image_size: int = 128
    classification_train_per_class: int = DEFAULT_CLASSIFICATION_PER_CLASS[0]
    classification_val_per_class: int = DEFAULT_CLASSIFICATION_PER_CLASS[1]
    classification_image_size: int = 64
    seed: int = 0
    # Scene difficulty: objects per scene (inclusive range), their radius as a fraction of the image size, and the
    # share of scenes given one near-image-sized object. The defaults are the cluttered scenes; fewer, larger
    # objects make easier ones: higher AP at every schedule, though not flat curves sooner (tools/demo_curves.sh: on
    # the demo's model, 1-3 objects of radius 0.25-0.45, both inits still gain 7-24 box AP from 8 to 16 passes).
    min_objects: int = DEFAULT_OBJECTS[0]
    max_objects: int = DEFAULT_OBJECTS[1]
    min_radius: float = DEFAULT_RADIUS[0]
    max_radius: float = DEFAULT_RADIUS[1]
    large_object_fraction: float = 0.35
    categories: int = len(DETECTION_SHAPES)  # the first N shapes of DETECTION_SHAPES

    def __post_init__(self) -> None:
        if not 1 <= self.categories <= len(DETECTION_SHAPES):
            raise ScratchdetError(
                f"--categories {self.categories}: give 1 to {len(DETECTION_SHAPES)} ({', '.join(DETECTION_SHAPES)})"
            )
        if not 1 <= self.min_objects <= self.max_objects:
            raise ScratchdetError(
                f"objects per scene {self.min_objects}..{self.max_objects}: give 1 <= MIN <= MAX (--objects MIN MAX)"
            )
        if not 0 < self.min_radius <= self.max_radius <= 0.5:
            raise ScratchdetError(
                f"object radius {self.min_radius}..{self.max_radius}: give fractions of the image size with "
                "0 < MIN <= MAX <= 0.5 (--radius MIN MAX)"
            )


def with_difficulty(spec: SynthSpec, objects: Sequence[int] | None, radius: Sequence[float] | None) -> SynthSpec:
    """`spec` with the objects per scene and their radius (MIN, MAX) given (`--objects`, `--radius`)."""
    if objects is not None:
        spec = replace(spec, min_objects=objects[0], max_objects=objects[1])
    if radius is not None:
        spec = replace(spec, min_radius=radius[0], max_radius=radius[1])
    return spec


# The demo's scenes (`scratchdet demo`): three categories (circle, square, triangle) instead of six, so that the
# demo's short schedules reach a less marginal AP. Measured with the demo's model and pre-training on 2 cores: at
# iteration 500, box AP 14.2 (pre-trained) / 9.0 (scratch) on three categories, lr not yet decayed, against
# 9.9 / 6.2 on six after the first lr step. Neither init is near its plateau (three categories, 1x = 250
# iterations: 4x still gains +15.8 / +8.4 box AP over 2x).
DEMO_SPEC = SynthSpec(categories=3)

# The GPU demo's data (`scratchdet demo` on a CUDA machine): all six shape categories, 500 validation scenes (the
# verdicts' intervals narrow with the validation set), and 300 classification images per class. The number of
# training scenes is what one GPU can train at the paper's proportions (1x = 12 epochs, the longest arm 6x) within
# the demo's 10 minutes: measured by tools/gpu_demo_calibration.py.
DEMO_GPU_TRAIN_IMAGES = 400
DEMO_GPU_SPEC = SynthSpec(
    train_images=DEMO_GPU_TRAIN_IMAGES,
    val_images=500,
    classification_train_per_class=300,
    classification_val_per_class=50,
)


# ------------------------------------------------------------------------------------------------ shapes


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(2 * points, -math.pi / 2)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


_CROSS = np.array(
    [
        [-0.3, -1],
        [0.3, -1],
        [0.3, -0.3],
        [1, -0.3],
        [1, 0.3],
        [0.3, 0.3],
        [0.3, 1],
        [-0.3, 1],
        [-0.3, 0.3],
        [-1, 0.3],
        [-1, -0.3],
        [-0.3, -0.3],
    ]
)

OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(40),
    "square": _regular(4, math.pi / 4) * math.sqrt(2) * 0.8,
    "triangle": _regular(3, -math.pi / 2),
    "star": _star(),
    "hexagon": _regular(6),
    "cross": _CROSS,
    "pentagon": _regular(5, -math.pi / 2),
    "rhombus": _regular(4) * np.array([1.0, 0.55]),
}


def _place(outline: np.ndarray, cx: float, cy: float, radius: float, aspect: float, angle: float) -> np.ndarray:
    """Outline scaled, stretched, rotated and moved: an (N, 2) array of pixel coordinates."""
    stretched = outline * np.array([radius * aspect, radius / aspect])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return stretched @ rotation.T + np.array([cx, cy])


def _polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(canvas, dtype=bool)


# ------------------------------------------------------------------------------------------ appearance


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3)


def _texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W) modulation in [0, 1] multiplying the object's colour."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        return np.ones((height, width), np.float32)
    if kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 7)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        return np.where((phase % 1.0) < 0.5, 1.0, 0.45).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(4, 7)
        dx, dy = (xx % period) - period / 2, (yy % period) - period / 2
        return np.where(dx * dx + dy * dy < (period / 3.2) ** 2, 0.4, 1.0).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gradient between two colours, low-contrast clutter strokes, and pixel noise: float (H, W, 3)."""
    start, end = _random_colour(rng), _random_colour(rng)
    t = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
    ramp = t[None, :, None] if t.size == width else t[:, None, None]
    image = start * (1 - ramp) + end * ramp
    image = np.broadcast_to(image, (height, width, 3)).copy()
    clutter = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(20, 60)), width=int(rng.integers(1, 3)))
    image += np.asarray(clutter, np.float32)[:, :, None] * (rng.choice([-1.0, 1.0]))
    image += rng.normal(0, rng.uniform(3, 12), size=(height, width, 3))
    return image


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, modulation: np.ndarray) -> None:
    image[mask] = colour * modulation[mask][:, None]


def _to_uint8(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")


def _save_png(image: Image.Image, path: Path) -> None:
    # Fixed settings and no metadata: the bytes depend on the pixels only.
    image.save(path, format="PNG", compress_level=6, optimize=False)


# ------------------------------------------------------------------------------------ detection scenes


def _scene_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(height, width): half square, a quarter landscape, a quarter portrait; `size` is the longer side."""
    short = round(size * 0.75)
    return [(size, size), (size, size), (short, size), (size, short)][int(rng.integers(0, 4))]


def _inside(points: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """`points` (centred on the origin) moved to a random position where they fit in the image, or centred when
    they are larger than it."""
    low, high = -points.min(axis=0), np.array([width, height]) - points.max(axis=0)
    offset = np.where(low < high, low + rng.random(2) * (high - low), (low + high) / 2)
    return points + offset


def _keeps_others_visible(mask: np.ndarray, visible: list[np.ndarray], full_areas: list[int]) -> bool:
    """Whether painting `mask` on top leaves every earlier object at least MIN_VISIBLE_FRACTION visible."""
    return all(
        int((seen & ~mask).sum()) >= MIN_VISIBLE_FRACTION * full for seen, full in zip(visible, full_areas, strict=True)
    )


def render_scene(spec: SynthSpec, split: str, index: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One cluttered scene and its objects (category index, RLE of the visible mask, box, area).

    Objects lie inside the image and hide at most 1 - MIN_VISIBLE_FRACTION of each other, so every painted object is
    labelled and its outline, which alone identifies its category, stays mostly visible.
    """
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], index])
    size = spec.image_size
    height, width = _scene_size(rng, size)
    image = _background(rng, height, width)
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    # Log-uniform radii give every COCO size bucket (small: triangles, stars and partly hidden objects at the low end);
    # below 0.16 x size an outline keeps too few pixels at the demo's 96 px to tell its shape. Large objects are
    # drawn first so small ones sit on top.
    low, high = math.log(size * spec.min_radius), math.log(size * spec.max_radius)
    radii = np.sort(np.exp(rng.uniform(low, high, count)))[::-1]
    # COCO's "large" starts at 96x96 pixels of visible area: a third of the scenes get one near-image-sized object
    # so that bucket is populated at 128 px too.
    if rng.random() < spec.large_object_fraction:
        radii[0] = size * rng.uniform(0.45, 0.55)
    categories: list[int] = []
    visible: list[np.ndarray] = []  # what is still visible of each painted object
    full_areas: list[int] = []
    for radius in radii:
        category = int(rng.integers(0, spec.categories))
        outline = OUTLINES[DETECTION_SHAPES[category]]
        for _ in range(PLACEMENT_TRIES):
            shape = _place(
                outline, 0.0, 0.0, float(radius), math.exp(rng.uniform(-0.35, 0.35)), rng.uniform(0, 2 * math.pi)
            )
            mask = _polygon_mask(_inside(shape, rng, height, width), height, width)
            if _keeps_others_visible(mask, visible, full_areas):
                break
        else:
            continue  # no room left for this object: leave it out rather than hide others
        texture = TEXTURES[int(rng.integers(0, len(TEXTURES)))]
        _paint(image, mask, _random_colour(rng), _texture(texture, rng, height, width))
        visible = [seen & ~mask for seen in visible] + [mask]
        full_areas.append(int(mask.sum()))
        categories.append(category)
    objects = []
    for category, seen in zip(categories, visible, strict=True):
        area = int(seen.sum())
        if area < MIN_VISIBLE_PIXELS:
            continue
        rle = mask_utils.encode(np.asfortranarray(seen[:, :, None].astype(np.uint8)))[0]
        ys, xs = np.nonzero(seen)
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        objects.append({"category": category, "rle": rle, "bbox": box, "area": area})
    return _to_uint8(image), objects


def _write_scene(args: tuple[SynthSpec, str, int, str]) -> tuple[int, int, int, list[dict[str, Any]]]:
    spec, split, index, folder = args
    image, objects = render_scene(spec, split, index)
    _save_png(image, Path(folder) / f"{index:06d}.png")
    for obj in objects:
        obj["rle"] = {"size": obj["rle"]["size"], "counts": obj["rle"]["counts"].decode("ascii")}
    return index, image.height, image.width, objects


def _coco_json(
    split: str, rows: list[tuple[int, int, int, list[dict[str, Any]]]], shapes: tuple[str, ...]
) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, height, width, objects in rows:
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{index:06d}.png", "height": height, "width": width})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "segmentation": obj["rle"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(shapes)]
    info = {"description": f"scratchdet generated shapes ({split})", "version": "1"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


# ------------------------------------------------------------------------------------- classification


def classification_classes() -> list[str]:
    return [f"{shape}_{texture}" for shape in CLASSIFICATION_SHAPES for texture in TEXTURES]


def render_classification_image(seed: int, split: str, index: int, size: int, class_index: int) -> Image.Image:
    """One object of class `class_index` (shape × texture), centred, on a cluttered background."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], class_index, index])
    shape, texture = divmod(class_index, len(TEXTURES))
    image = _background(rng, size, size)
    points = _place(
        OUTLINES[CLASSIFICATION_SHAPES[shape]],
        cx=size / 2 + rng.uniform(-0.1, 0.1) * size,
        cy=size / 2 + rng.uniform(-0.1, 0.1) * size,
        radius=size * rng.uniform(0.28, 0.45),
        aspect=math.exp(rng.uniform(-0.25, 0.25)),
        angle=rng.uniform(0, 2 * math.pi),
    )
    mask = _polygon_mask(points, size, size)
    _paint(image, mask, _random_colour(rng), _texture(TEXTURES[texture], rng, size, size))
    return _to_uint8(image)


def _write_classification_image(args: tuple[int, str, int, int, int, str]) -> None:
    seed, split, index, size, class_index, path = args
    _save_png(render_classification_image(seed, split, index, size, class_index), Path(path))


# ---------------------------------------------------------------------------------------------- driver


def _run_parallel(
    function: Callable[[Any], Any], jobs: list[Any], workers: int, description: str, quiet: bool
) -> list[Any]:
    """`map` over worker processes in input order, with a progress bar."""
    chunk = max(1, len(jobs) // (workers * 16))
    if workers <= 1:
        results: Iterable[Any] = map(function, jobs)
        return list(tqdm(results, total=len(jobs), desc=description, disable=quiet or None))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(function, jobs, chunksize=chunk)
        return list(tqdm(results, total=len(jobs), desc=description, disable=quiet or None))


GENERATED_MARK = ".scratchdet-generated"  # in a folder the generators wrote: theirs to write again
SPEC_FILE = "synth.json"


def claim_folder(out: Path) -> None:
    """Make `out` a folder a generator may write: new, empty, or written by a generator before (complete or
    interrupted). Any other folder is refused: the generated annotations and images would replace a dataset's
    own files of the same names."""
    out = Path(out)
    ours = (out / GENERATED_MARK).is_file() or (out / SPEC_FILE).is_file()
    if out.is_dir() and not ours and any(out.iterdir()):
        found = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ScratchdetError(
            f"{out} holds files that scratchdet did not generate ({found}): generating there would overwrite a "
            "dataset's annotations and images; give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / GENERATED_MARK).touch()
    # A set being rewritten is complete again only when its spec is (written last).
    (out / SPEC_FILE).unlink(missing_ok=True)


def generate(out: Path, spec: SynthSpec, workers: int | None = None, quiet: bool = False) -> None:
    """Write the detection set (COCO JSON + PNGs) and the classification set (ImageFolder) under `out` (a new or
    empty folder, or one generated before: `claim_folder`)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    claim_folder(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", spec.train_images), ("val", spec.val_images)):
        (out / split).mkdir(exist_ok=True)
        scenes = [(spec, split, i, str(out / split)) for i in range(count)]
        rows = _run_parallel(_write_scene, scenes, workers, f"scenes/{split}", quiet)
        text = json.dumps(_coco_json(split, rows, DETECTION_SHAPES[: spec.categories]), separators=(",", ":"))
        atomic_write_text(out / "annotations" / f"instances_{split}.json", text)
    classes = classification_classes()
    for split, per_class in (
        ("classification/train", spec.classification_train_per_class),
        ("classification/val", spec.classification_val_per_class),
    ):
        jobs: list[tuple[int, str, int, int, int, str]] = []
        for class_index, name in enumerate(classes):
            (out / split / name).mkdir(parents=True, exist_ok=True)
            path = out / split / name
            jobs += [
                (spec.seed, split, i, spec.classification_image_size, class_index, str(path / f"{i:05d}.png"))
                for i in range(per_class)
            ]
        _run_parallel(_write_classification_image, jobs, workers, split, quiet)
    # Written last: its presence says the set is complete (an interrupted generation is redone).
    atomic_write_text(out / SPEC_FILE, json.dumps(asdict(spec), indent=2))


def existing_spec(out: Path) -> SynthSpec | None:
    """The spec of a complete generated dataset at `out`, or None."""
    try:
        return SynthSpec(**json.loads((out / SPEC_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
