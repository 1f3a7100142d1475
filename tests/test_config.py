from pathlib import Path

import pytest

from scratchdet.config import apply_overrides, load_config, preset_names
from scratchdet.errors import ScratchdetError


def test_every_preset_resolves() -> None:
    assert "demo/mask_rcnn" in preset_names()
    for name in preset_names():
        assert load_config(name).description


def test_override_sets_typed_value() -> None:
    config = load_config("demo/mask_rcnn", ["solver.base_lr=0.01", "data.min_size=[80, 96]", "eval.max_images=null"])
    assert config.solver.base_lr == 0.01
    assert config.data.min_size == [80, 96]
    assert config.eval.max_images is None


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(ScratchdetError, match=r"unknown key 'model\.nrom'\. Did you mean 'model\.norm'\?"):
        load_config("demo/mask_rcnn", ["model.nrom=gn"])


def test_unknown_key_in_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("solver:\n  base_lrr: 0.1\n")
    with pytest.raises(ScratchdetError, match=r"mine\.yaml(.|\n)*unknown key 'solver\.base_lrr'.*'solver\.base_lr'"):
        load_config(str(path))


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(ScratchdetError, match=r"solver\.base_lr = 'fast' is not allowed: .*valid number"):
        load_config("demo/mask_rcnn", ["solver.base_lr=fast"])


def test_out_of_range_value() -> None:
    with pytest.raises(ScratchdetError, match=r"solver\.base_lr = -1 is not allowed: .*greater than 0"):
        load_config("demo/mask_rcnn", ["solver.base_lr=-1"])
    with pytest.raises(ScratchdetError, match=r"data\.flip_prob = 2 is not allowed"):
        load_config("demo/mask_rcnn", ["data.flip_prob=2"])


def test_evaluation_period_changes_are_positive() -> None:
    assert load_config("demo/mask_rcnn", ["eval.period_from={3000: 1500}"]).eval.period_from == {3000: 1500}
    with pytest.raises(ScratchdetError, match=r"eval\.period_from: \{0: 8\}: give positive iterations and periods"):
        load_config("demo/mask_rcnn", ["eval.period_from={0: 8}"])


def test_bad_schedule_and_norm_values_list_the_choices() -> None:
    with pytest.raises(ScratchdetError, match=r"solver\.schedule = 'long'.*'1x', '2x'"):
        load_config("demo/mask_rcnn", ["solver.schedule=long"])
    with pytest.raises(ScratchdetError, match=r"model\.norm = 'group'.*'gn'"):
        load_config("demo/mask_rcnn", ["model.norm=group"])


@pytest.mark.parametrize("override", ["solver.base_lr", "=3", "solver..base_lr=1", "solver.base_lr.x=1"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ScratchdetError, match="override"):
        load_config("demo/mask_rcnn", [override])


def test_unknown_preset_suggests_close_name() -> None:
    with pytest.raises(ScratchdetError, match=r"Did you mean 'demo/mask_rcnn'"):
        load_config("demo/mask_rcn")


def test_base_file_is_merged(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("solver:\n  base_lr: 0.05\n  schedule: 2x\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nsolver:\n  schedule: 6x\n")
    config = load_config(str(tmp_path / "child.yaml"))
    assert (config.solver.base_lr, config.solver.schedule, config.solver.schedule_multiplier) == (0.05, "6x", 6.0)


def test_yaml_cannot_build_python_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ScratchdetError, match="not valid YAML"):
        load_config(str(path))


def test_scratch_with_frozen_bn_is_refused_unless_overridden() -> None:
    with pytest.raises(ScratchdetError, match="frozen statistics of a randomly initialized network"):
        load_config("demo/mask_rcnn", ["model.norm=frozen_bn"])
    config = load_config("demo/mask_rcnn", ["model.norm=frozen_bn", "model.allow_frozen_bn_scratch=true"])
    assert config.model.norm == "frozen_bn"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config("demo/mask_rcnn", ["solver.schedule=3"])
    assert config.solver.schedule == "3x"
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(str(path)) == config


def test_override_values_are_not_mutating_the_input() -> None:
    data = {"solver": {"base_lr": 0.1}}
    apply_overrides(data, ["solver.base_lr=0.2"])
    assert data == {"solver": {"base_lr": 0.1}}


def test_compile_takes_a_mode_and_reads_yaml_switches() -> None:
    modes = {value: load_config("demo/mask_rcnn", [f"solver.compile={value}"]).solver.compile
             for value in ("off", "on", "false", "eager", "reduce-overhead")}  # fmt: skip
    assert modes == {"off": "eager", "on": "default", "false": "eager", "eager": "eager",
                     "reduce-overhead": "reduce-overhead"}  # fmt: skip
    with pytest.raises(ScratchdetError, match=r"solver\.compile = 'fast' is not allowed"):
        load_config("demo/mask_rcnn", ["solver.compile=fast"])
