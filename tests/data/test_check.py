"""One test per problem the checker must find, each on its own broken copy of a tiny COCO folder."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scratchdet.data.build import prepare_train_dataset
from scratchdet.data.check import check_dataset
from scratchdet.data.transforms import build_train_transforms
from scratchdet.errors import ScratchdetError
from tests.conftest import tiny_coco, write_image


def _check(root: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> list[tuple[str, str]]:
    data = tiny_coco(root)
    if mutate:
        mutate(data)
        (root / "instances.json").write_text(json.dumps(data))
    report = check_dataset(root / "instances.json", root / "images", quiet=True)
    return [(p.severity, str(p)) for p in report.problems]


def _has(problems: list[tuple[str, str]], severity: str, text: str) -> bool:
    return any(s == severity and text in message for s, message in problems)


def test_clean_fixture_has_no_problem(tmp_path: Path) -> None:
    assert _check(tmp_path) == []


def test_malformed_json(tmp_path: Path) -> None:
    tiny_coco(tmp_path)
    (tmp_path / "instances.json").write_text('{"images": [')
    report = check_dataset(tmp_path / "instances.json", tmp_path / "images", quiet=True)
    assert not report.ok and "not valid JSON (line 1" in str(report.errors[0])


def test_missing_top_level_key(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d.pop("annotations"))
    assert _has(problems, "error", "missing or not a list: annotations")


def test_missing_keys_in_records(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        del d["images"][0]["file_name"]
        del d["annotations"][3]["bbox"]

    problems = _check(tmp_path, mutate)
    assert _has(problems, "error", "image 1: no 'file_name' string")
    assert _has(problems, "error", "annotation 4: 'bbox' must be [x, y, width, height]")


def test_missing_image_file(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: (tmp_path / "images" / "b.png").unlink())
    assert _has(problems, "error", "image 2: ") and _has(problems, "error", "image file is missing")


def test_zero_byte_and_not_an_image(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        (tmp_path / "images" / "b.png").write_bytes(b"")
        (tmp_path / "images" / "c.png").write_text("hello")

    problems = _check(tmp_path, mutate)
    assert sum("not an image PIL can read" in m for _, m in problems) == 2


def test_truncated_image(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        path = tmp_path / "images" / "b.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])

    assert _has(_check(tmp_path, mutate), "error", "truncated")


def test_size_in_json_differs_from_file(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d["images"][1].update(width=50))
    assert _has(problems, "error", "file is 40x30 but the JSON says 50x30")


@pytest.mark.parametrize("box", [[5, 5, 0, 4], [5, 5, 4, -1]])
def test_box_with_non_positive_size(tmp_path: Path, box: list[float]) -> None:
    problems = _check(tmp_path, lambda d: d["annotations"][0].update(bbox=box))
    assert _has(problems, "error", "annotation 1: bbox") and _has(problems, "error", "non-positive width or height")


def test_box_outside_image(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"] = [30, 20, 15, 5]  # pokes out on the right: clipped
        d["annotations"][3]["bbox"] = [50, 5, 4, 4]  # entirely outside

    problems = _check(tmp_path, mutate)
    assert _has(problems, "warning", "annotation 1: bbox [30, 20, 15, 5] extends outside the 40x30 image")
    assert _has(problems, "error", "annotation 4: bbox [50, 5, 4, 4] lies entirely outside")


def test_nan_values(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"][1] = float("nan")
        d["annotations"][3]["area"] = float("inf")

    problems = _check(tmp_path, mutate)
    assert _has(problems, "error", "annotation 1: bbox [2, nan, 8, 8] has NaN")
    assert _has(problems, "error", "annotation 4: 'area' must be a finite number")


def test_polygon_with_two_points(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]))
    assert _has(problems, "error", "polygon with 2 points; a polygon needs at least 3")


def test_rle_of_wrong_size(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d["annotations"][3]["segmentation"].update(size=[31, 40]))
    assert _has(problems, "error", "RLE size [31, 40] differs from the image's [height, width] = [30, 40]")


def test_empty_mask(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d["annotations"][1].update(segmentation={"size": [30, 40], "counts": [1200]}))
    assert _has(problems, "error", "annotation 2: the mask is empty")


def test_unknown_category(tmp_path: Path) -> None:
    problems = _check(tmp_path, lambda d: d["annotations"][0].update(category_id=8))
    assert _has(problems, "error", "category_id 8 is not in 'categories' (known: [7, 9])")


def test_duplicate_ids(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["images"][2]["id"] = 2
        d["annotations"][1]["id"] = 1

    problems = _check(tmp_path, mutate)
    assert _has(problems, "error", "image 2: image id 2 is used 2 times")
    assert _has(problems, "error", "annotation 1: annotation id 1 is used 2 times")


@pytest.mark.parametrize(("mode", "word"), [("L", "grey"), ("RGBA", "RGBA"), ("CMYK", "CMYK"), ("I;16", "16-bit")])
def test_unusual_image_modes_are_notes(tmp_path: Path, mode: str, word: str) -> None:
    def mutate(d: dict[str, Any]) -> None:
        path = tmp_path / "images" / ("b.tif" if mode == "CMYK" else "b.png")
        if mode == "I;16":
            Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(path)
        else:
            write_image(path, 40, 30, mode)
        d["images"][1]["file_name"] = path.name

    problems = _check(tmp_path, mutate)
    assert [s for s, _ in problems] == ["note"]
    assert _has(problems, "note", f"{word} image, converted to 8-bit RGB")


def test_sixteen_bit_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    from scratchdet.data.coco import load_rgb

    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png"))[0, 0].tolist() == [128, 128, 128]


def test_training_refuses_errors_or_skips_exactly_the_bad_items(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["annotations"][0]["category_id"] = 8  # bad annotation on image 1
        d["images"][1]["width"] = 50  # bad image 2 (with its annotation 4)

    _check(tmp_path, mutate)
    arguments: dict[str, Any] = {
        "transforms": build_train_transforms([30], 100, 0.0),
        "with_masks": True,
        "keep_empty_images": True,
        "subset": None,
        "subset_seed": 0,
        "quiet": True,
    }
    with pytest.raises(ScratchdetError, match=r"set data\.skip_bad_items=true(.|\n)*category_id 8"):
        prepare_train_dataset(tmp_path / "instances.json", tmp_path / "images", skip_bad_items=False, **arguments)
    prepared = prepare_train_dataset(tmp_path / "instances.json", tmp_path / "images", skip_bad_items=True, **arguments)
    assert prepared.dataset.image_ids == [1, 3]
    assert [a["id"] for a in prepared.dataset.index.annotations[1]] == [2, 3]
    assert {(s["image_id"], s["annotation_id"]) for s in prepared.skipped_items} == {
        (1, 1),
        (2, None),
        (2, 4),
    }  # 4: its RLE no longer fits the width
