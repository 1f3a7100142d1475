"""Study specs: a base config and axes, expanded into arms, pre-training jobs and forks.

    base: demo/mask_rcnn            # a preset or a YAML file (relative to the spec's folder)
    overrides: [eval.period=100]    # applied to the base before the axes
    axes:
      init: [scratch, pretrained]   # pretrained: the backbone pre-trained by the study itself
      norm: [gn]                    # frozen_bn | bn | syncbn | gn | none
      schedule: [1x, 3x]
      train_subset: [null, 200]     # null: the whole training set
      seed: [0]
    pretrain: {epochs: 10}          # settings of the `pretrain` section for the pre-trained arms

Shared prefixes are trained once: two arms that differ only in schedule length see the same data, learning rate
and initialization until the shorter one's first lr step (the data order depends on the seed and the iteration
only). The longest arm of each such group is trained in full and keeps a checkpoint at each shorter arm's first
step; the shorter arm starts from that checkpoint ("fork") instead of training the prefix again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scratchdet.config import Config, NormName, apply_overrides, build_config, read_config_data, read_yaml_mapping
from scratchdet.errors import ScratchdetError

AXES = ("init", "norm", "schedule", "train_subset", "seed")


class Axes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init: list[Literal["scratch", "pretrained"]] = Field(["scratch", "pretrained"], min_length=1)
    norm: list[NormName] = Field(["gn"], min_length=1)
    schedule: list[str] = Field(["1x"], min_length=1)
    train_subset: list[int | None] = Field([None], min_length=1)
    seed: list[int] = Field([0], min_length=1)

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedules_as_text(cls, values: Any) -> Any:
        return [f"{v}x" if isinstance(v, int | float) else v for v in values] if isinstance(values, list) else values


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    base: str
    overrides: list[str] = []
    axes: Axes = Field(default_factory=Axes)
    pretrain: dict[str, Any] = {}
    fork_shared_prefixes: bool = True


@dataclass
class PretrainJob:
    """One pre-training run, shared by every pre-trained arm with its backbone and norm."""

    name: str
    config: Config

    @property
    def iterations(self) -> int:
        from scratchdet.engine.pretrain import classification_iterations

        return classification_iterations(self.config)


@dataclass
class Arm:
    """One training run of the study."""

    name: str
    values: dict[str, Any]
    config: Config
    iterations: int
    first_step: int
    pretrain: str | None = None  # name of the PretrainJob it starts from
    fork_parent: str | None = None  # name of the arm whose checkpoint it starts from
    fork_iteration: int = 0
    keep_iterations: list[int] = field(default_factory=list)  # checkpoints forks need from this arm


@dataclass
class StudyPlan:
    spec: StudySpec
    pretrain_jobs: list[PretrainJob]
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
    return spec


def arm_name(values: dict[str, Any], with_subset: bool) -> str:
    """e.g. scratch_gn_6x_seed0, pretrained_gn_1x_n1000_seed0 (the subset only when the study varies it)."""
    parts = [values["init"], values["norm"], values["schedule"]]
    if with_subset:
        parts.append("full" if values["train_subset"] is None else f"n{values['train_subset']}")
    return "_".join([*parts, f"seed{values['seed']}"])


def pretrain_name(config: Config) -> str:
    from scratchdet.engine.pretrain import pretraining_norm

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


def backbone_path(study_dir: Path, job: str) -> Path:
    return Path(study_dir) / "pretrain" / job / "backbone.pth"


def expand(spec: StudySpec, study_dir: Path, dataset_size: int | None = None) -> StudyPlan:
    """Every arm of the grid, the pre-training jobs they need, and which arms fork from which.

    `dataset_size` (the full training set) is needed for epoch-based schedules; subsets use their own size.
    """
    from scratchdet.engine.run import schedule_for

    base = apply_overrides(read_config_data(spec.base), spec.overrides)
    axes = spec.axes
    with_subset = len(axes.train_subset) > 1 or axes.train_subset[0] is not None
    arms: list[Arm] = []
    jobs: dict[str, PretrainJob] = {}
    for combination in itertools.product(*(getattr(axes, axis) for axis in AXES)):
        values = dict(zip(AXES, combination, strict=True))
        name = arm_name(values, with_subset)
        job = None
        if values["init"] == "pretrained":
            job = _pretrain_job(base, _arm_config(base, values, "to-be-pretrained", name), spec.pretrain)
            jobs.setdefault(job.name, job)
        init = str(backbone_path(study_dir, job.name)) if job else "scratch"
        config = _arm_config(base, values, init, name)
        size = values["train_subset"] or dataset_size
        if config.solver.base_epochs is not None and not size:
            raise ScratchdetError("epoch-based schedules need the training-set size; the dataset could not be read")
        schedule = schedule_for(config, size)
        first_step = schedule.steps[0] if schedule.steps else 0
        arms.append(Arm(name, values, config, schedule.total_iterations, first_step, job.name if job else None))
    if spec.fork_shared_prefixes:
        _plan_forks(arms)
    return StudyPlan(spec, list(jobs.values()), arms)


def _pretrain_job(base: dict[str, Any], arm_config: Config, settings: dict[str, Any]) -> PretrainJob:
    data = arm_config.model_dump(mode="json")
    data["pretrain"] = {**data["pretrain"], **settings}
    data["seed"] = base.get("seed", 0)
    data["model"]["init"] = "scratch"
    data["model"]["freeze_at"] = 0
    data["model"]["allow_frozen_bn_scratch"] = True  # the detector settings only describe the backbone here
    config = build_config(data, "study pre-training")
    return PretrainJob(pretrain_name(config), config)


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
