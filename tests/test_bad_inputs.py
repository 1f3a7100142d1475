"""The bad-input corpus: each defect a dataset or a config can have, built here and fed to `scratchdet train`.

Each case must end in one of three documented ways: an error (exit 2) whose message names the file or field and
says what to do, a logged skip (with data.skip_bad_items=true), or a run that works. Never a traceback, never a
silently wrong dataset. docs/reliability.md holds the table of cases and outcomes; a test keeps it in step.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scratchdet.cli import main
from tests.conftest import tiny_coco, write_image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
TINY_RUN = ["solver.base_epochs=null", "solver.schedule=0.0000444444x", "solver.warmup_iters=1", "data.min_size=[32]",
            "data.max_size=48", "data.test_size=32", "data.num_workers=0", "eval.period=0", "eval.max_images=2",
            "model.narrow_width=16", "model.narrow_depth=10", "model.fpn_channels=32", "model.gn_groups=8",
            "model.box_head_conv_dim=16", "model.box_head_fc_dim=32", "model.mask_head_conv_dim=16",
            "model.anchor_sizes=[8,16,32,64,128]", "model.roi_canonical_scale=32"]  # fmt: skip


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels: what a decompression bomb looks like to a reader."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _set(path: str, value: Any) -> Callable[[Path, dict[str, Any]], None]:
    """A mutation setting `data[a][i][b] = value` for `path` "a.i.b"."""

    def mutate(root: Path, data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target: Any = data
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


def _write_file(name: str, content: bytes) -> Callable[[Path, dict[str, Any]], None]:
    return lambda root, data: (root / "images" / name).write_bytes(content)


def _truncate(name: str) -> Callable[[Path, dict[str, Any]], None]:
    def mutate(root: Path, data: dict[str, Any]) -> None:
        write_image(root / "images" / name, 40, 30, value=7)
        content = (root / "images" / name).read_bytes()
        (root / "images" / name).write_bytes(content[: len(content) // 2])

    return mutate


def _duplicate(kind: str) -> Callable[[Path, dict[str, Any]], None]:
    return lambda root, data: data[kind][1].__setitem__("id", data[kind][0]["id"])


def _raw_json(text: str) -> Callable[[Path, dict[str, Any]], None]:
    def mutate(root: Path, data: dict[str, Any]) -> None:
        data.clear()
        data["__raw__"] = text

    return mutate


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # "error", "skipped" or "works"
    message: str  # a regular expression the output must match
    mutate: Callable[[Path, dict[str, Any]], None] | None = None
    overrides: tuple[str, ...] = ()


CASES = [
    # ---- the annotation file
    Case("malformed JSON", "error", r"instances\.json: not valid JSON \(line 1", _raw_json('{"images": [')),
    Case("not a JSON object", "error", r"instances\.json: expected a JSON object", _raw_json("[1, 2]")),
    Case(
        "deeply nested JSON",
        "error",
        r"instances\.json: JSON nested too deeply to be a COCO annotation file",
        _raw_json("[" * 200_000 + "]" * 200_000),
    ),
    Case("no images", "error", r"instances\.json: the 'images' list is empty", _set("images", [])),
    Case("missing top-level key", "error", r"missing or not a list: annotations", lambda r, d: d.pop("annotations")),
    Case(
        "annotation without bbox",
        "error",
        r"annotation 4: 'bbox' must be \[x, y, width, height\]",
        lambda r, d: d["annotations"][3].pop("bbox"),
    ),
    Case(
        "image without file_name",
        "error",
        r"image 1: no 'file_name' string",
        lambda r, d: d["images"][0].pop("file_name"),
    ),
    Case("image id is a string", "error", r"image #0 has no integer 'id'", _set("images.0.id", "1")),
    Case("width is a string", "error", r"'width' must be a positive integer, got '40'", _set("images.0.width", "40")),
    Case(
        "bbox is a string",
        "error",
        r"'bbox' must be \[x, y, width, height\] numbers, got '1,2,3,4'",
        _set("annotations.0.bbox", "1,2,3,4"),
    ),
    Case(
        "category_id is a string",
        "error",
        r"category_id '7' is not in 'categories'",
        _set("annotations.0.category_id", "7"),
    ),
    Case("iscrowd is a word", "error", r"'iscrowd' must be 0 or 1, got 'no'", _set("annotations.0.iscrowd", "no")),
    Case(
        "segmentation is a number",
        "error",
        r"segmentation must be polygons or RLE, got int",
        _set("annotations.0.segmentation", 5),
    ),
    Case(
        "category without name",
        "error",
        r"category 7 has no 'name' string",
        lambda r, d: d["categories"][0].pop("name"),
    ),
    # ---- image files
    Case(
        "image file missing", "error", r"b\.png: image file is missing", lambda r, d: (r / "images" / "b.png").unlink()
    ),
    Case("zero-byte image", "error", r"b\.png: file is not an image", _write_file("b.png", b"")),
    Case(
        "file_name climbs out of the image folder",
        "error",
        r"file_name '\.\./outside\.png' points outside the image folder .*images",
        _set("images.1.file_name", "../outside.png"),
    ),
    Case(
        "absolute file_name",
        "error",
        r"file_name '/etc/hostname' points outside the image folder",
        _set("images.1.file_name", "/etc/hostname"),
    ),
    Case("not an image", "error", r"b\.png: file is not an image", _write_file("b.png", b"name,box\nx,1 2 3 4\n")),
    # Training reads only the image headers up front (decoding every file of COCO takes minutes); a truncated file
    # stops the run when it is first read. `scratchdet data check` decodes everything and finds it beforehand.
    Case(
        "truncated image", "error", r"b\.png: cannot decode the image \(image file is truncated\)", _truncate("b.png")
    ),
    Case(
        "decompression bomb",
        "error",
        r"b\.png: image is too large to decode safely",
        _write_file("b.png", png_claiming(30000, 30000)),
    ),
    Case(
        "width/height differ from the file",
        "error",
        r"file is 40x30 but the JSON says 50x30",
        _set("images.1.width", 50),
    ),
    # ---- boxes, masks, ids
    Case(
        "NaN in a box",
        "error",
        r"bbox \[2, 3, nan, 8\] has NaN or infinite values",
        _set("annotations.0.bbox", [2, 3, float("nan"), 8]),
    ),
    Case("negative box size", "error", r"non-positive width or height", _set("annotations.0.bbox", [2, 3, -8, 8])),
    Case(
        "box outside the image",
        "error",
        r"bbox \[60, 3, 8, 8\] lies entirely outside the 40x30 image",
        _set("annotations.0.bbox", [60, 3, 8, 8]),
    ),
    Case(
        "polygon of two points",
        "error",
        r"polygon with 2 points; a polygon needs at least 3",
        _set("annotations.0.segmentation", [[2, 3, 10, 3]]),
    ),
    Case(
        "RLE of the wrong size",
        "error",
        r"RLE size \[20, 40\] differs from the image's \[height, width\] = \[30, 40\]",
        _set("annotations.1.segmentation.size", [20, 40]),
    ),
    Case(
        "unknown category id",
        "error",
        r"category_id 8 is not in 'categories' \(known: \[7, 9\]\)",
        _set("annotations.0.category_id", 8),
    ),
    Case("duplicate image id", "error", r"image id 1 is used 2 times", _duplicate("images")),
    Case("duplicate annotation id", "error", r"annotation id 1 is used 2 times", _duplicate("annotations")),
    Case(
        "bad items skipped on request",
        "skipped",
        r"skipped 2 bad items \(listed in skipped_items\.json\)",
        lambda r, d: (_set("annotations.0.category_id", 8)(r, d), _set("annotations.3.bbox", [1, 1, 0, 4])(r, d)),
        ("data.skip_bad_items=true", "data.val_annotations=clean.json"),
    ),
    Case(
        "bad items in the validation set",
        "error",
        r"the dataset has errors; fix them \(bad items are never skipped "
        r"in evaluation.*category_id 8",
        _set("annotations.0.category_id", 8),
        ("data.skip_bad_items=true", "data.train_annotations=clean.json"),
    ),
    # ---- paths
    Case("unicode and spaces in paths", "works", r"training 8 iterations"),
    # ---- the config
    Case("unknown config key", "error", r"unknown key 'solver\.lr'.*base_lr", overrides=("solver.lr=0.1",)),
    Case(
        "wrong type in the config",
        "error",
        r"solver\.images_per_batch.*'eight'",
        overrides=("solver.images_per_batch=eight",),
    ),
    Case("negative learning rate", "error", r"solver\.base_lr.*greater than 0", overrides=("solver.base_lr=-0.1",)),
    Case("zero iterations", "error", r"solver\.schedule = '0x' is not allowed", overrides=("solver.schedule=0x",)),
    Case("zero epochs", "error", r"solver\.base_epochs.*greater than 0", overrides=("solver.base_epochs=0",)),
    Case(
        "subset larger than the dataset",
        "error",
        r"data\.train_subset=10 is larger than the training set \(3 usable images\)",
        overrides=("data.train_subset=10",),
    ),
    # ---- a start that fails after the run directory was made: running the same command again must not be refused
    Case(
        "weight file missing",
        "error",
        r"model\.init=/nonexistent/backbone\.pth: no such file",
        overrides=("model.init=/nonexistent/backbone.pth",),
    ),
]


def _dataset(root: Path, case: Case) -> None:
    data = tiny_coco(root)
    (root / "clean.json").write_text(json.dumps(data))
    if case.mutate is not None:
        case.mutate(root, data)
    raw = data.pop("__raw__", None)
    (root / "instances.json").write_text(raw if raw is not None else json.dumps(data))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_as_documented(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / ("dätä sét" if case.outcome == "works" else "data")
    _dataset(root, case)
    if case.outcome == "works":
        (root / "images" / "a.png").rename(root / "images" / "ïmage one.png")
        data = json.loads((root / "instances.json").read_text())
        data["images"][0]["file_name"] = "ïmage one.png"
        (root / "instances.json").write_text(json.dumps(data, ensure_ascii=False))
    files = [
        f"data.root={root}",
        "data.train_annotations=instances.json",
        "data.train_images=images",
        "data.val_annotations=instances.json",
        "data.val_images=images",
        "data.keep_empty_images=true",
    ]
    # The case's own overrides come last and win (one case breaks only the validation set).
    out = tmp_path / "rün dir"
    code = main(["train", "demo/mask_rcnn", *files, *TINY_RUN, *case.overrides, "--out", str(out)])
    printed = capsys.readouterr()
    output = printed.out + printed.err + ((out / "log.txt").read_text() if (out / "log.txt").is_file() else "")
    assert re.search(case.message, output, re.DOTALL), output[-2000:]
    assert "Traceback" not in output
    assert code == (2 if case.outcome == "error" else 0), output[-2000:]
    if case.outcome == "error":
        assert not (out / "checkpoints").exists()  # refused before any training
        # The same command again meets the same refusal: a run that never started does not block its directory.
        again = main(["train", "demo/mask_rcnn", *files, *TINY_RUN, *case.overrides, "--out", str(out)])
        printed = capsys.readouterr()
        assert again == 2 and re.search(case.message, printed.out + printed.err, re.DOTALL), printed.err[-2000:]
        assert "already holds a run" not in printed.err
    else:
        assert (out / "summary.json").is_file()


def test_the_docs_table_lists_every_case_with_its_outcome() -> None:
    rows = re.findall(r"^\| ([^|]+?) \| (error|skipped|works) \|", DOCS.read_text(), re.MULTILINE)
    assert sorted(rows) == sorted((c.name, c.outcome) for c in CASES)


def test_data_check_reads_a_huge_images_header_and_does_not_decode_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """13000 x 13000 is under PIL's bomb limit but 0.5 GB decoded: data check refuses by the header, unless told."""
    data = tiny_coco(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(png_claiming(13000, 13000))
    data["images"][1].update(width=13000, height=13000)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    command = ["data", "check", str(tmp_path / "instances.json"), "--images", str(tmp_path / "images")]
    assert main(command) == 1
    printed = capsys.readouterr().out
    assert "b.png: image is 13000x13000, above the 64,000,000 pixels data check decodes" in printed
    assert "--max-pixels" in printed and "Traceback" not in printed
    assert main([*command, "--max-pixels", "200000000"]) == 1  # now decoded: this one is also truncated
    assert "b.png: image cannot be decoded" in capsys.readouterr().out
