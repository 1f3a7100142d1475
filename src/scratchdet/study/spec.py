"""Study specs: a base config and axes, expanded into arms, pre-training runs and forks.

    base: demo/mask_rcnn            # a preset or a YAML file (relative to the spec's folder)
    overrides: [eval.period=100]    # applied to the base before the axes
    axes:
      init: [scratch, pretrained]   # pretrained: the backbone pre-trained by the study itself; or a name in weights
      norm: [gn]                    # frozen_bn | bn | syncbn | gn | none
      schedule: [1x, 3x, matched]   # matched: a scratch arm as costly as pre-training + the longest fine-tuning
      train_subset: [null, 200]     # null: the whole training set
      seed: [0]
    pretrain: {epochs: 10}          # settings of the `pretrain` section; per_seed: true pre-trains once per seed
    weights:                        # published backbones as inits: `init: [scratch, imagenet]`
      imagenet: weights/R-50-GN.pkl # a path (relative to the spec's folder), or {path: ..., pretrain: {...}}
    resources: {gpus: 8}            # per job (processes, nodes, GPUs, CPUs; per-job patterns): study/resources.py
    slurm: {partition: learnfair, time: 4320}   # for --executor slurm (partition, account, time, sbatch, ...)

Shared prefixes are trained once (a shorter schedule forks from the longest at its first lr step), and the schedule
`matched` sizes a from-scratch arm to the pixels of pre-training plus fine-tuning: docs/studies.md has the design.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scratchdet.assemble import schedule_for
from scratchdet.config import (
    Config,
    apply_overrides,
    build_config,
    read_config_data,
    read_yaml_mapping,
    without_init,
)
from scratchdet.engine import rundir
from scratchdet.engine.detection import mean_training_pixels
from scratchdet.engine.pretrain import classification_iterations, pretraining_norm
from scratchdet.engine.schedule import one_x_iterations
from scratchdet.errors import ScratchdetError
from scratchdet.modeling.weights import PUBLISHED_PRETRAINING
from scratchdet.names import NormName
from scratchdet.study.resources import ResourceSpec

AXES = ("init", "norm", "schedule", "train_subset", "seed")
INITS = ("scratch", "pretrained")  # any other init is the name of a weight file under `weights`
MATCHED = "matched"  # the schedule of a scratch arm as costly as pre-training + the longest fine-tuning
PER_SEED = "per_seed"  # pretrain: {per_seed: true}: one pre-training per seed, so the seeds sample its variance too


def is_matched(schedule: str) -> bool:
    return schedule == MATCHED or schedule.startswith(MATCHED + "@")


def matched_reference(schedule: str, schedules: list[str]) -> str | None:
    """The fine-tuning schedule a `matched` (the longest regular one of `schedules`) or `matched@Nx` schedule is
    matched to; None for a regular schedule."""
    if not is_matched(schedule):
        return None
    regular = [s for s in schedules if not is_matched(s)]
    return schedule.partition("@")[2] or max(regular, key=lambda s: float(s[:-1]))


class Axes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init: list[str] = Field(["scratch", "pretrained"], min_length=1)
    norm: list[NormName] = Field(["gn"], min_length=1)
    schedule: list[str] = Field(["1x"], min_length=1)
    train_subset: list[int | None] = Field([None], min_length=1)
    seed: list[int] = Field([0], min_length=1)

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedules_as_text(cls, values: Any) -> Any:
        return [f"{v}x" if isinstance(v, int | float) else v for v in values] if isinstance(values, list) else values

    @field_validator("schedule")
    @classmethod
    def _a_regular_schedule(cls, values: list[str]) -> list[str]:
        regular = [v for v in values if not is_matched(v)]
        if not regular:
            raise ValueError(f"'{MATCHED}' is matched to the longest other schedule: list one too, e.g. [1x, matched]")
        for value in values:
            reference = matched_reference(value, values)
            if reference is not None and reference not in regular:
                raise ValueError(
                    f"{value!r}: '{MATCHED}@Nx' matches the fine-tuning at a schedule of the list; {reference} is not "
                    f"one of {regular}"
                )
        return values


class PretrainCost(BaseModel):
    """What a published backbone's pre-training cost (the paper's accounting: one instance per image)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    images_per_epoch: int = Field(gt=0)
    epochs: float = Field(gt=0)
    input_size: int = Field(gt=0, description="training crop side in pixels")

    def counts(self) -> dict[str, int]:
        images = round(self.images_per_epoch * self.epochs)
        return {"images": images, "instances": images, "pixels": images * self.input_size**2}


class WeightsInit(BaseModel):
    """A weight file used as an init; `pretrain` gives (or overrides) its pre-training cost."""

    model_config = ConfigDict(extra="forbid")

    path: str
    pretrain: PretrainCost | None = None

    def pretrain_counts(self) -> dict[str, int] | None:
        """Images / instances / pixels of its pre-training: given in the spec, else from the table of known files
        (`PUBLISHED_PRETRAINING`), else None ("cost unknown", never 0)."""

        known = PUBLISHED_PRETRAINING.get(Path(self.path).name)
        cost = self.pretrain or (PretrainCost(**known) if known else None)
        return cost.counts() if cost else None


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    base: str
    overrides: list[str] = []
    axes: Axes = Field(default_factory=Axes)
    pretrain: dict[str, Any] = {}
    weights: dict[str, WeightsInit] = {}
    fork_shared_prefixes: bool = True
    resources: ResourceSpec = Field(default_factory=ResourceSpec)  # see study/resources.py
    slurm: dict[str, Any] = {}  # settings of --executor slurm, checked by it (study/slurm.py: SlurmSettings)

    @field_validator("weights", mode="before")
    @classmethod
    def _paths_alone(cls, value: Any) -> Any:
        return (
            {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
            if isinstance(value, dict)
            else value
        )

    @field_validator("pretrain")
    @classmethod
    def _per_seed_is_a_flag(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get(PER_SEED, False), bool):
            raise ValueError(f"{PER_SEED}: true (one pre-training per seed) or false (one for all seeds)")
        return value

    @model_validator(mode="after")
    def _inits_are_known(self) -> StudySpec:
        for name in self.weights:
            if name in INITS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name):
                raise ValueError(
                    f"weights name {name!r}: use letters, digits, '.' or '-', other than {' or '.join(INITS)}"
                )
        unknown = [i for i in self.axes.init if i not in INITS and i not in self.weights]
        if unknown:
            raise ValueError(
                f"axes.init {unknown}: an init is scratch, pretrained, or a name under weights "
                f"({', '.join(self.weights) or 'none given'})"
            )
        return self


@dataclass
class Pretraining:
    """One pre-training run, shared by every pre-trained arm with its backbone and norm."""

    name: str
    config: Config

    @property
    def iterations(self) -> int:

        return classification_iterations(self.config)


@dataclass
class Arm:
    """One training run of the study."""

    name: str
    values: dict[str, Any]
    config: Config
    iterations: int
    first_step: int
    pretrain: str | None = None  # name of the Pretraining it starts from
    fork_parent: str | None = None  # name of the arm whose checkpoint it starts from
    fork_iteration: int = 0
    keep_iterations: list[int] = field(default_factory=list)  # checkpoints forks need from this arm
    cost: str = ""  # for a cost-matched arm: how its length was chosen


@dataclass
class StudyPlan:
    spec: StudySpec
    pretrainings: list[Pretraining]
    arms: list[Arm]

    @property
    def iterations_saved(self) -> int:
        return sum(arm.fork_iteration for arm in self.arms)


def read_spec(path: Path) -> StudySpec:
    data = read_yaml_mapping(Path(path))
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ScratchdetError(f"invalid study spec {path}:\n  " + "\n  ".join(lines)) from None
    base = Path(path).parent / spec.base
    if base.is_file():
        spec.base = str(base)
    for entry in spec.weights.values():
        entry.path = str(Path(path).parent / entry.path)
        if not Path(entry.path).is_file():
            raise ScratchdetError(f"{path}: weights file {entry.path} not found; give its path relative to the spec")
    return spec


def arm_name(values: dict[str, Any], with_subset: bool) -> str:
    """e.g. scratch_gn_6x_seed0, pretrained_gn_1x_n1000_seed0 (the subset only when the study varies it)."""
    parts = [values["init"], values["norm"], values["schedule"]]
    if with_subset:
        parts.append("full" if values["train_subset"] is None else f"n{values['train_subset']}")
    return "_".join([*parts, f"seed{values['seed']}"])


def pretrain_name(config: Config) -> str:

    model = config.model
    width = f"w{model.narrow_width}d{model.narrow_depth}" if model.backbone == "resnet_narrow" else ""
    return f"{model.backbone}{width}_{pretraining_norm(model.norm)}"


def _arm_config(base: dict[str, Any], values: dict[str, Any], init: str, name: str) -> Config:
    overrides = [
        f"model.norm={values['norm']}",
        f"model.init={init}",
        f"solver.schedule={values['schedule']}",
        f"data.train_subset={'null' if values['train_subset'] is None else values['train_subset']}",
        f"seed={values['seed']}",
    ]
    if init == "scratch":
        overrides.append("model.freeze_at=0")
    return build_config(apply_overrides(base, overrides), f"study arm {name}")


INITS_FILE = "inits.json"  # STUDY_DIR/inits.json: each weight-file init's name, path and pre-training counts


def inits_record(spec: StudySpec) -> dict[str, dict[str, Any]]:
    return {name: {"path": entry.path, "pretrain": entry.pretrain_counts()} for name, entry in spec.weights.items()}


def backbone_path(study_dir: Path, job: str) -> Path:
    return Path(study_dir) / "pretrain" / job / rundir.BACKBONE


def config_file(study_dir: Path, job: str) -> Path:
    """STUDY_DIR/configs/<job>.yaml (job: arms/NAME or pretrain/NAME): its resolved config, written before any job
    runs."""
    return Path(study_dir) / "configs" / f"{job.replace('/', '__')}.yaml"


def expand(spec: StudySpec, study_dir: Path, dataset_size: int | None = None) -> StudyPlan:
    """Every arm of the grid, the pre-training jobs they need, and which arms fork from which.

    `dataset_size` (the full training set) is needed for epoch-based schedules; subsets use their own size.
    """

    base = apply_overrides(read_config_data(spec.base), spec.overrides)
    axes = spec.axes
    with_subset = len(axes.train_subset) > 1 or axes.train_subset[0] is not None
    arms: list[Arm] = []
    jobs: dict[str, Pretraining] = {}
    shortest = min((s for s in axes.schedule if not is_matched(s)), key=lambda s: float(s[:-1]))
    for values, target, reference in _grid(spec):
        name = arm_name(values, with_subset)
        size = values["train_subset"] or dataset_size
        job = None
        if values["init"] == "pretrained" or target == "pretrained":
            job = _pretraining(
                base, _arm_config(base, {**values, "schedule": shortest}, "to-be-pretrained", name), spec.pretrain
            )
        cost = ""
        if target is not None and reference is not None:
            if job is not None:
                settings = job.config.pretrain
                pixels = job.iterations * settings.images_per_batch * settings.image_size**2
            else:
                counts = spec.weights[target].pretrain_counts()
                assert counts is not None  # _matched_targets keeps only the files of known cost
                pixels = counts["pixels"]
            values, cost = _matched_schedule(base, values, pixels, target, reference, size, name)
            job = None  # a from-scratch arm: it only borrows the pre-training's cost
        elif job is not None:
            jobs.setdefault(job.name, job)
        init = "scratch"
        if values["init"] in spec.weights:
            init = spec.weights[values["init"]].path
        elif job is not None:
            init = str(backbone_path(study_dir, job.name))
        config = _arm_config(base, values, init, name)
        if config.solver.base_epochs is not None and not size:
            raise ScratchdetError("epoch-based schedules need the training-set size; the dataset could not be read")
        schedule = schedule_for(config, size)
        first_step = schedule.steps[0] if schedule.steps else 0
        pretrain = job.name if job else None
        arms.append(Arm(name, values, config, schedule.total_iterations, first_step, pretrain, cost=cost))
    if spec.fork_shared_prefixes:
        _plan_forks(arms)
    return StudyPlan(spec, list(jobs.values()), arms)


def _matched_targets(spec: StudySpec) -> list[str]:
    """The pre-trained inits whose cost a `matched` arm can be matched to: the study's own pre-training, and weight
    files whose pre-training cost is known (given in the spec or in the table of published files)."""
    known = {name for name, entry in spec.weights.items() if entry.pretrain_counts() is not None}
    targets = [i for i in spec.axes.init if i == "pretrained" or i in known]
    if any(is_matched(s) for s in spec.axes.schedule) and not targets:
        raise ScratchdetError(
            f"study spec: schedule '{MATCHED}' matches a scratch arm to the cost of pre-training + fine-tuning; add "
            "pretrained to axes.init, or a weight-file init whose pre-training cost is known (weights: {NAME: {path: "
            "..., pretrain: {dataset, images_per_epoch, epochs, input_size}}})"
        )
    return targets


def _grid(spec: StudySpec) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """Every arm's axis values, with the init and the fine-tuning schedule a cost-matched arm is matched to (None
    for the others). `matched` is a from-scratch schedule: one arm per pre-trained init of known cost, named after
    it when there are several (scratch_gn_matched-imagenet_seed0), and after its schedule when `matched@3x` names
    it (scratch_gn_matched-3x_seed0). Only on the study's full training set (`full_training_set`): the finding
    that compares cost-matched arms is judged there, and on a reduced set such an arm would cost a whole
    pre-training's worth of iterations for nothing the report reads."""
    targets = _matched_targets(spec)
    full = full_training_set(spec.axes.train_subset)
    grid: list[tuple[dict[str, Any], str | None, str | None]] = []
    for combination in itertools.product(*(getattr(spec.axes, axis) for axis in AXES)):
        values = dict(zip(AXES, combination, strict=True))
        reference = matched_reference(values["schedule"], spec.axes.schedule)
        if reference is None:
            grid.append((values, None, None))
        elif values["init"] == "scratch" and values["train_subset"] == full:
            label = values["schedule"].replace("@", "-")
            grid += [
                ({**values, "schedule": label if len(targets) == 1 else f"{label}-{target}"}, target, reference)
                for target in targets
            ]
    return grid


def full_training_set(subsets: list[int | None]) -> int | None:
    """The 'full data' of a study's `train_subset` axis: None (the whole training set) when listed, else its
    largest subset; the findings that are not about less data are judged on it."""
    return None if None in subsets else max(s for s in subsets if s is not None)


def matched_iterations(pretrain_pixels: float, finetune_iterations: int, pixels_per_iteration: float) -> int:
    """Iterations a from-scratch arm needs to see as many pixels as pre-training plus `finetune_iterations` of
    fine-tuning (both detection arms see the same pixels per iteration): rounded up, so it never sees fewer."""
    return math.ceil(finetune_iterations + pretrain_pixels / pixels_per_iteration - 1e-9)


def _matched_schedule(
    base: dict[str, Any],
    values: dict[str, Any],
    pretrain_pixels: int,
    target: str,
    reference_schedule: str,
    size: int | None,
    name: str,
) -> tuple[dict[str, Any], str]:
    """The arm's values with the schedule that matches pre-training + fine-tuning at `reference_schedule` in pixels
    seen, and a line saying how (for the dry run)."""
    reference = _arm_config(base, {**values, "schedule": reference_schedule}, "scratch", name)
    solver = reference.solver
    finetune = schedule_for(reference, size).total_iterations
    per_iteration = solver.images_per_batch * mean_training_pixels(reference)
    iterations = matched_iterations(pretrain_pixels, finetune, per_iteration)
    unit = one_x_iterations(solver.images_per_batch, solver.base_epochs, size)
    # A quarter iteration above the target, so that rounding the schedule's length lands on it exactly.
    multiplier = (iterations + 0.25) / unit
    cost = (
        f"{iterations:,} iterations ({multiplier:.2f}x) see {iterations * per_iteration:,.0f} pixels: pre-training "
        f"({target}) {pretrain_pixels:,} + fine-tuning at {reference_schedule} {finetune * per_iteration:,.0f} "
        f"({finetune:,} iterations)"
    )
    return {**values, "schedule": f"{multiplier!r}x"}, cost


def _pretraining(base: dict[str, Any], arm_config: Config, settings: dict[str, Any]) -> Pretraining:
    """The pre-training an arm starts from: one per backbone and norm, shared by every seed (seeded by the base
    config), or with `per_seed: true` one per seed too, seeded by the arm's seed (named ..._seed1)."""
    data = without_init(arm_config).model_dump(mode="json")  # the detector settings only describe the backbone
    per_seed = settings.get(PER_SEED, False)
    data["pretrain"] = {**data["pretrain"], **{k: v for k, v in settings.items() if k != PER_SEED}}
    data["seed"] = arm_config.seed if per_seed else base.get("seed", 0)
    config = build_config(data, "study pre-training")
    name = pretrain_name(config)
    return Pretraining(f"{name}_seed{config.seed}" if per_seed else name, config)


def _plan_forks(arms: list[Arm]) -> None:
    """Within each group of arms equal but for the schedule, fork shorter arms from the longest one."""
    groups: dict[tuple[Any, ...], list[Arm]] = {}
    for arm in arms:
        key = tuple(v for k, v in arm.values.items() if k != "schedule")
        groups.setdefault(key, []).append(arm)
    for members in groups.values():
        trunk = max(members, key=lambda a: a.iterations)
        for arm in members:
            if arm is trunk or arm.iterations == trunk.iterations or arm.first_step <= 0:
                continue
            arm.fork_parent, arm.fork_iteration = trunk.name, arm.first_step
            trunk.keep_iterations.append(arm.first_step)
