"""The report's gallery: drawn from saved detections alone, a seeded and deterministic choice of images, user
strings escaped, and a report that survives a dataset that moved."""

from __future__ import annotations

import html
import io
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from scratchdet.study import gallery
from scratchdet.study.report import build_report
from scratchdet.study.results import read_study
from tests.study.fixtures import write_ground_truth, write_scored_arm, write_val_images

HOSTILE = "<img src=x onerror=alert(1)>"


def _study(study_dir: Path, names: tuple[str, str] = ("a", "b")) -> None:
    write_ground_truth(study_dir, names=names)
    write_val_images(study_dir)
    for init, quality in (("scratch", 0.4), ("pretrained", 0.9)):
        for schedule, iterations in (("1x", 300), ("3x", 900)):
            write_scored_arm(study_dir, f"{init}_gn_{schedule}_seed0", init=init, schedule=schedule,
                             curve=[(iterations // 3, quality / 2), (iterations, quality)])  # fmt: skip


def _box(i: int) -> dict[str, object]:
    return {"bbox": [0.0, 0.0, 10.0, 10.0], "category_id": 1, "score": 0.9, "image_id": i}


def test_the_images_where_the_arms_differ_most_come_first_then_a_seeded_choice() -> None:
    candidates = list(range(1, 21))
    truth = {i: [_box(i)] * 3 for i in candidates}  # three objects, each a box at the same place
    found = [{i: [_box(i)] * 3 for i in candidates}, {i: [_box(i)] * 3 for i in candidates}]
    found[1][7] = []  # arm 2 misses all three objects of image 7,
    found[1][3] = [_box(3)]  # two of image 3,
    found[0][12] = [_box(12)] * 2  # and arm 1 one of image 12
    chosen = gallery.choose_images(candidates, truth, found)
    assert chosen[:3] == [7, 3, 12]
    assert len(chosen) == gallery.IMAGES and len(set(chosen)) == gallery.IMAGES
    assert gallery.choose_images(candidates, truth, found) == chosen  # seeded: the same runs, the same rows
    assert gallery.choose_images(list(reversed(candidates)), truth, found)[:3] == [7, 3, 12]


def test_the_gallery_is_drawn_from_saved_detections_one_column_per_init(tmp_path: Path) -> None:
    _study(tmp_path)
    for checkpoint in tmp_path.glob("arms/*/checkpoints"):  # no model is needed: there is none
        shutil.rmtree(checkpoint)
    built = gallery.build_gallery(read_study(tmp_path))
    assert built.missing == ""
    assert built.columns == ["ground truth", "scratch_gn_3x_seed0", "pretrained_gn_3x_seed0"]
    assert len(built.rows) == gallery.IMAGES and all(len(pictures) == 3 for _, pictures in built.rows)
    # The first row is an image where the arms find different numbers of objects: its pictures differ.
    name, pictures = built.rows[0]
    decoded = [np.asarray(Image.open(io.BytesIO(p))) for p in pictures]
    source = np.asarray(Image.open(tmp_path / "data" / "val" / name))
    assert decoded[0].shape[0] >= 4 * source.shape[0]  # 64 px scenes enlarged for reading
    assert not np.array_equal(decoded[1], decoded[2])
    assert built.crops and all(len(cells) == len(notes) == 3 for _, cells, notes in built.crops)
    assert built.crops[0][2][0] == "ground truth" and built.crops[0][2][2].startswith("mask IoU")
    again = gallery.build_gallery(read_study(tmp_path))
    assert [n for n, _ in again.rows] == [n for n, _ in built.rows] and again.rows[0][1] == pictures


def test_the_report_embeds_the_gallery_and_escapes_category_names(tmp_path: Path) -> None:
    _study(tmp_path, names=(HOSTILE, "<b>b</b>"))
    report = build_report(tmp_path)
    text = report.read_text()
    section = text[text.index("<h2>Gallery</h2>") : text.index("<h2>Runs</h2>")]
    assert HOSTILE not in text and "<b>b</b>" not in text  # the crops' captions name the category, escaped:
    assert f"{html.escape(HOSTILE)} in " in section or "&lt;b&gt;b&lt;/b&gt; in " in section
    assert len(re.findall(r"<img src='data:image/png;base64,", section)) >= 3 * gallery.IMAGES
    markdown = (report.parent / "report.md").read_text()
    linked = re.findall(r"\(gallery/(\w+\.png)\)", markdown)
    assert len(linked) >= 3 * gallery.IMAGES and all((report.parent / "gallery" / f).is_file() for f in linked)


def test_a_report_without_the_validation_images_says_why_it_has_no_gallery(tmp_path: Path) -> None:
    _study(tmp_path)
    shutil.rmtree(tmp_path / "data" / "val")
    text = build_report(tmp_path).read_text()
    assert f"No gallery: the validation images are not at {tmp_path / 'data' / 'val'}" in text
    (tmp_path / "data" / "val").mkdir()  # there, but without the image files: the file is named
    text = build_report(tmp_path).read_text()
    assert re.search(r"No gallery: \S+\.png: image file not found", text), text[text.index("Gallery") :][:300]
