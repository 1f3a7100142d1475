"""`scratchdet demo` / `make demo`: generated data, the demo study and its report, in one call.

Two variants: on a CPU, `configs/demo/study.yaml` (a small GN Mask R-CNN, two arms at once); where PyTorch sees a
GPU, `configs/demo/study_gpu.yaml` (the paper's proportions: 1x = 12 epochs, up to 12x, two reduced training sets,
two or more seeds, the cost-matched arm; several arms sharing the GPU through CUDA MPS). The data and study folders
are reused, so a second call resumes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from scratchdet.errors import ScratchdetError
from scratchdet.storage import atomic_write_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scratchdet.data.synthetic import SynthSpec

# `scratchdet --help` reads DEMO_GPU_JOBS from here: torch and the study machinery are imported where used.

DEMO_DATA = Path("data/demo")
DEMO_GPU_DATA = Path("data/demo_gpu")
DEMO_GPU_JOBS = 8  # arms sharing one GPU in the GPU demo (calibrated: tools/gpu_demo_calibration.py)


@dataclass(frozen=True)
class DemoVariant:
    """What `scratchdet demo` runs on one kind of machine: its study, its data, and arms trained at once."""

    study: str  # under configs/demo/
    data: Path
    out: Path
    jobs: int


def demo_variants() -> dict[str, DemoVariant]:
    cores = os.cpu_count() or 1
    return {
        # The CPU demo's small model keeps about one core busy: two arms at once finish about a third sooner.
        "cpu": DemoVariant("study.yaml", DEMO_DATA, Path("runs/demo"), min(2, cores)),
        # At this model size one process leaves most of the GPU idle: arms share it (as clients of one MPS server,
        # engine/mps.py), each with two cores.
        "cuda": DemoVariant(
            "study_gpu.yaml", DEMO_GPU_DATA, Path("runs/demo_gpu"), max(1, min(DEMO_GPU_JOBS, cores // 2))
        ),
    }


def demo_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ScratchdetError("--device cuda: PyTorch sees no CUDA device here; run the CPU demo with --device cpu")
    return requested


def demo_study(packaged: Path, data: Path, out: Path, moved: bool) -> Path:
    """The demo's study spec; with the data elsewhere than the preset expects, a copy pointed at it, written as the
    study directory's own spec (a study directory holds one spec: a run with other data is refused there)."""
    if not moved:
        return packaged
    spec = yaml.safe_load(packaged.read_text())
    spec["overrides"] = [
        *spec.get("overrides", []),
        f"data.root={data.resolve()}",
        f"pretrain.root={(data / 'classification').resolve()}",
    ]
    text = f"# {packaged.name} with the data in {data}\n" + yaml.safe_dump(spec, sort_keys=False)
    saved = out / "study.yaml"
    if saved.is_file() and saved.read_text() != text:
        raise ScratchdetError(f"{out} holds a study with another spec ({saved}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, text)
    return saved


def run_demo(
    requested_device: str = "auto",
    *,
    data: Path | None = None,
    out: Path | None = None,
    jobs: int | None = None,
    objects: Sequence[int] | None = None,
    radius: Sequence[float] | None = None,
    check_only: bool = False,
) -> Path | None:
    """Generate the demo data (if absent), check it, run the demo study; returns the report's path (None with
    `check_only`). `requested_device`: auto, cpu or cuda; `data`, `out`, `jobs`: the variant's unless given;
    `objects`, `radius`: the scenes' difficulty (`SynthSpec`), the variant's unless given."""
    from scratchdet.data.check import check_dataset
    from scratchdet.data.synthetic import DEMO_GPU_SPEC, DEMO_SPEC, with_difficulty
    from scratchdet.engine import mps
    from scratchdet.study.local import LocalExecutor
    from scratchdet.study.runner import run_study

    started = time.perf_counter()
    device = demo_device(requested_device)
    variant = demo_variants()[device]
    packaged_spec = DEMO_GPU_SPEC if device == "cuda" else DEMO_SPEC
    spec = with_difficulty(packaged_spec, objects, radius)
    default_data, default_out = demo_folders(variant, spec, packaged_spec)
    explicit_jobs = jobs
    data, out, jobs = data or default_data, out or default_out, jobs or variant.jobs
    if device == "cuda" and not explicit_jobs and not mps.available():
        print(
            f"CUDA MPS is not available here ({mps.CONTROL}): arms would time-share the GPU, no faster than one "
            "at a time, so the demo trains one at a time"
        )
        jobs = 1
    print(f"the {device.upper()} demo: configs/demo/{variant.study}, data in {data}, study in {out}, {jobs} at once")
    if spec != packaged_spec:
        print(
            f"scenes: {spec.min_objects}-{spec.max_objects} objects of radius {spec.min_radius:g}-{spec.max_radius:g} "
            f"(the packaged demo's: {packaged_spec.min_objects}-{packaged_spec.max_objects} of "
            f"{packaged_spec.min_radius:g}-{packaged_spec.max_radius:g})"
        )
    demo_data(data, spec, out)
    for split in ("train", "val"):
        report = check_dataset(data / "annotations" / f"instances_{split}.json", data / split, quiet=True)
        print(report.format(max_problems=20))
        if not report.ok:
            raise ScratchdetError(f"the demo dataset in {data} has errors; delete it and run again")
    print(f"data ready {time.perf_counter() - started:.0f} s after the start")
    if check_only:
        return None
    packaged = Path(str(resources.files("scratchdet") / "configs" / "demo" / variant.study))
    path = run_study(demo_study(packaged, data, out, moved=data != variant.data), out, executor=LocalExecutor(jobs))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return path


def demo_folders(variant: DemoVariant, spec: SynthSpec, packaged: SynthSpec) -> tuple[Path, Path]:
    """The default data and study folders: the variant's, or beside them, named after the difficulty, for scenes
    other than the packaged ones (so that a demo on easier scenes neither regenerates nor strands the default one)."""
    if spec == packaged:
        return variant.data, variant.out
    suffix = f"_objects{spec.min_objects}-{spec.max_objects}_radius{spec.min_radius:g}-{spec.max_radius:g}"
    return variant.data.with_name(variant.data.name + suffix), variant.out.with_name(variant.out.name + suffix)


def demo_data(data: Path, spec: SynthSpec, out: Path) -> None:
    """The demo's data in `data`: kept when it is this spec's, else generated — unless the study in `out` trained
    on the set there: regenerating it would strand that study (a study refuses data changed under its runs)."""
    from scratchdet.data.synthetic import existing_spec, generate

    existing = existing_spec(data)
    if existing == spec:
        print(f"demo dataset already in {data}")
        return
    if existing is not None and (out / "study.yaml").is_file():
        changed = ", ".join(
            f"{field.name} {getattr(existing, field.name)} -> {getattr(spec, field.name)}"
            for field in fields(spec)
            if getattr(existing, field.name) != getattr(spec, field.name)
        )
        raise ScratchdetError(
            f"{out} holds a demo study trained on the data in {data}, which this demo generates differently "
            f"({changed}): delete both to run the demo afresh, or give --data and --out elsewhere (the old study's "
            f"report: scratchdet report {out})"
        )
    print(f"generating the demo dataset in {data}")
    generate(data, spec)
