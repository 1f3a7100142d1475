import hashlib
import json
from pathlib import Path

from scratchdet.data.check import check_dataset
from scratchdet.data.synthetic import SynthSpec, classification_classes, existing_spec, generate
from tests.conftest import SMALL_SPEC


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_other_seed_does_not(tmp_path: Path, synth_dir: Path) -> None:
    spec = SynthSpec(train_images=6, val_images=3, classification_train_per_class=1, classification_val_per_class=1)
    generate(tmp_path / "a", spec, workers=2, quiet=True)
    generate(tmp_path / "b", spec, workers=1, quiet=True)  # worker count must not matter
    generate(tmp_path / "c", SynthSpec(**{**spec.__dict__, "seed": 1}), workers=2, quiet=True)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if a[name] != c[name] and name != "synth.json"]
    assert "annotations/instances_train.json" in differing
    assert len(differing) >= len(a) - 3  # essentially every image differs


def test_generated_dataset_passes_the_checker_and_fills_every_size_bucket(synth_dir: Path) -> None:
    for split in ("train", "val"):
        report = check_dataset(synth_dir / "annotations" / f"instances_{split}.json", synth_dir / split, quiet=True)
        assert report.ok, report.format()
        assert [p for p in report.problems if p.severity == "warning"] == []
    data = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())
    areas = [a["area"] for a in data["annotations"]]
    assert sum(a < 32**2 for a in areas) > 0
    assert sum(32**2 <= a < 96**2 for a in areas) > 0
    assert sum(a >= 96**2 for a in areas) > 0
    assert len(data["images"]) == SMALL_SPEC.train_images
    assert len({a["category_id"] for a in data["annotations"]}) == 6


def test_boxes_are_tight_boxes_of_the_masks(synth_dir: Path) -> None:
    from faster_coco_eval.core import mask as mask_utils

    data = json.loads((synth_dir / "annotations" / "instances_val.json").read_text())
    for annotation in data["annotations"]:
        rle = annotation["segmentation"]
        assert mask_utils.toBbox(rle).tolist() == annotation["bbox"]
        assert int(mask_utils.area(rle)) == annotation["area"]


def test_classification_set_has_more_classes_than_detection(synth_dir: Path) -> None:
    classes = sorted(p.name for p in (synth_dir / "classification" / "train").iterdir())
    assert classes == sorted(classification_classes())
    assert len(classes) > 6
    for name in classes:
        assert len(list((synth_dir / "classification" / "train" / name).glob("*.png"))) == 2
    assert existing_spec(synth_dir) == SMALL_SPEC


def test_scene_difficulty_knobs(tmp_path: Path) -> None:
    import json

    import pytest

    from scratchdet.errors import ScratchdetError

    spec = SynthSpec(train_images=12, val_images=0, classification_train_per_class=0, classification_val_per_class=0,
                     min_objects=1, max_objects=2, min_radius=0.3, max_radius=0.45)  # fmt: skip
    generate(tmp_path / "easy", spec, workers=1, quiet=True)
    data = json.loads((tmp_path / "easy" / "annotations" / "instances_train.json").read_text())
    per_image = [sum(a["image_id"] == i["id"] for a in data["annotations"]) for i in data["images"]]
    assert max(per_image) <= 2 and min(per_image) >= 1
    assert min(a["area"] for a in data["annotations"]) > 200  # radius >= 0.3 x 128 px, at least 60% visible
    assert existing_spec(tmp_path / "easy") == spec
    with pytest.raises(ScratchdetError, match="--objects"):
        SynthSpec(min_objects=3, max_objects=2)
    generate(tmp_path / "two", SynthSpec(**{**spec.__dict__, "categories": 2}), workers=1, quiet=True)
    data = json.loads((tmp_path / "two" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "square"]
    assert {a["category_id"] for a in data["annotations"]} == {1, 2}


def test_generating_never_overwrites_a_folder_it_did_not_write(tmp_path: Path) -> None:
    import json

    import pytest

    from scratchdet.data.synthetic import GENERATED_MARK
    from scratchdet.data.synthetic_keypoints import generate_keypoints
    from scratchdet.errors import ScratchdetError

    tiny = SynthSpec(train_images=2, val_images=1, classification_train_per_class=0, classification_val_per_class=0)
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_train.json").write_text("{}")
    for make in (lambda: generate(coco, tiny, workers=1, quiet=True),
                 lambda: generate_keypoints(coco, 1, 1, workers=1, quiet=True)):  # fmt: skip
        with pytest.raises(ScratchdetError, match=r"did not generate \(annotations\).*new or empty folder"):
            make()
    assert (coco / "annotations" / "instances_train.json").read_text() == "{}"  # untouched
    # A set it generated is written again with the new spec, and complete only once it all is.
    ours = tmp_path / "ours"
    generate(ours, tiny, workers=1, quiet=True)
    bigger = SynthSpec(**{**tiny.__dict__, "train_images": 3})
    generate(ours, bigger, workers=1, quiet=True)
    assert existing_spec(ours) == bigger
    assert len(json.loads((ours / "annotations" / "instances_train.json").read_text())["images"]) == 3
    # An interrupted generation (its mark, no spec yet) is redone; a set of an earlier version (a spec, no mark) too.
    (ours / "synth.json").unlink()
    generate(ours, tiny, workers=1, quiet=True)
    (ours / GENERATED_MARK).unlink()
    generate(ours, bigger, workers=1, quiet=True)
    assert existing_spec(ours) == bigger
