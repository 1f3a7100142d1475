"""Published weight files as study inits: arms named after them, refused before training when they do not fit,
their pre-training cost from the study spec or the table of known files, "unknown" otherwise."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from scratchdet.assemble import detector_from_config
from scratchdet.config import load_config
from scratchdet.errors import ScratchdetError
from scratchdet.study.findings import all_verdicts
from scratchdet.study.results import read_study
from scratchdet.study.runner import run_study
from tests.conftest import tiny_training_overrides
from tests.modeling.test_weights import _caffe2_name

SCHEDULE = "0.0000333333x"  # 12 iterations at 4 images
COST = {"dataset": "tiny", "images_per_epoch": 1000, "epochs": 2, "input_size": 32}


def _reference_body(synth_dir: Path, width: int = 16) -> dict[str, torch.Tensor]:
    config = load_config("demo/mask_rcnn", [*tiny_training_overrides(synth_dir), f"model.narrow_width={width}"])
    torch.manual_seed(3)
    model, _ = detector_from_config(config, 2)
    return {k: v for k, v in model.backbone.body.state_dict().items() if not k.endswith("num_batches_tracked")}


def _write_files(synth_dir: Path, folder: Path) -> None:
    """The same backbone as a torchvision-style state dict and as Detectron would write it (BGR 0-255 input)."""
    state = _reference_body(synth_dir)
    torch.save(state, folder / "tv.pth")
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    blobs = {_caffe2_name(k, "gn"): v.numpy() for k, v in state.items()}
    blobs["conv1_w"] = (state["conv1.weight"] / (255 * std)).flip(1).numpy()
    with open(folder / "R-50-GN.pkl", "wb") as file:
        pickle.dump({"blobs": blobs}, file, protocol=2)


def _spec(synth_dir: Path, folder: Path, weights: dict[str, object]) -> Path:
    overrides = [*tiny_training_overrides(synth_dir), "solver.base_epochs=null", "eval.max_images=4",
                 "eval.period=4", "output.checkpoint_period=4"]  # fmt: skip
    spec = {"base": "demo/mask_rcnn", "overrides": overrides, "weights": weights,
            "axes": {"init": ["scratch", *weights], "schedule": [SCHEDULE]}}  # fmt: skip
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder / "spec.yaml"


@pytest.mark.slow
def test_a_study_of_scratch_against_two_weight_files(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_files(synth_dir, tmp_path)
    spec = _spec(synth_dir, tmp_path, {"tv": "tv.pth", "gn-pkl": {"path": "R-50-GN.pkl", "pretrain": COST}})
    run_study(spec, tmp_path / "plan", dry_run=True)
    printed = capsys.readouterr().out
    assert "arms/tv_gn_0.0000333333x_seed0" in printed and "arms/gn-pkl_gn_0.0000333333x_seed0" in printed
    loaded = len(_reference_body(synth_dir))
    for name in ("tv.pth", "R-50-GN.pkl"):  # every tensor loaded, nothing missing or left over
        assert f"{name}: {loaded} tensors loaded\n" in printed + "\n", printed
    assert "missing" not in printed and "unexpected" not in printed
    run_study(spec, tmp_path / "out")
    arms = {a.init_name: a for a in read_study(tmp_path / "out")}
    assert sorted(arms) == ["gn-pkl", "scratch", "tv"]
    assert arms["gn-pkl"].pretrain_counts == {"images": 2000, "instances": 2000, "pixels": 2000 * 32 * 32}
    assert not arms["tv"].pretrain_cost_known and arms["tv"].pretrain_counts is None
    # Both files hold the same network: converted correctly, the two arms train identically.
    assert arms["tv"].final == arms["gn-pkl"].final
    verdicts = all_verdicts(list(arms.values()))
    assert [v.title.endswith("(pre-trained: gn-pkl)") for v in verdicts] == [True] * 4 + [False] * 4
    tv_speed = next(v for v in verdicts if v.title.startswith("2.") and v.title.endswith("(pre-trained: tv)"))
    assert tv_speed.label == "not tested: pre-training cost unknown"


def test_a_weight_file_that_does_not_fit_is_refused_before_training(synth_dir: Path, tmp_path: Path) -> None:
    torch.save(_reference_body(synth_dir, width=8), tmp_path / "narrower.pth")
    spec = _spec(synth_dir, tmp_path, {"narrower": "narrower.pth"})
    with pytest.raises(ScratchdetError, match=r"init narrower \(.*narrower.pth\) does not fit arm narrower_gn"):
        run_study(spec, tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_inits_must_be_named_and_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("base: demo/mask_rcnn\naxes: {init: [scratch, imagenet]}\n")
    with pytest.raises(ScratchdetError, match="an init is scratch, pretrained, or a name under weights"):
        run_study(tmp_path / "spec.yaml", tmp_path / "out", dry_run=True)
    (tmp_path / "spec.yaml").write_text(
        "base: demo/mask_rcnn\nweights: {imagenet: gone.pkl}\naxes: {init: [imagenet]}\n"
    )
    with pytest.raises(ScratchdetError, match=r"weights file .*gone\.pkl not found"):
        run_study(tmp_path / "spec.yaml", tmp_path / "out", dry_run=True)


def test_known_files_carry_their_published_pre_training_cost() -> None:
    from scratchdet.study.spec import WeightsInit

    assert WeightsInit(path="/w/R-50-GN.pkl").pretrain_counts() == {
        "images": 128_116_700, "instances": 128_116_700, "pixels": 128_116_700 * 224 * 224}  # fmt: skip
    assert WeightsInit(path="/w/mine.pth").pretrain_counts() is None
    assert json.dumps(WeightsInit(path="/w/mine.pth", pretrain=COST).pretrain_counts()) == (  # type: ignore[arg-type]
        '{"images": 2000, "instances": 2000, "pixels": 2048000}'
    )
