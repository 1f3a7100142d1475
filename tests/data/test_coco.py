from pathlib import Path

import numpy as np
import pytest
import torch

from scratchdet.data.batching import TrainingBatches
from scratchdet.data.build import prepare_train_dataset
from scratchdet.data.coco import CocoDetection, CocoIndex, nested_subset
from scratchdet.data.transforms import build_train_transforms
from scratchdet.errors import ScratchdetError


def _dataset(root: Path, flip: float = 0.0, sizes: tuple[int, ...] = (30,), keep_empty: bool = True) -> CocoDetection:
    transforms = build_train_transforms(sizes, 1000, flip)
    return prepare_train_dataset(
        root / "instances.json",
        root / "images",
        transforms,
        with_masks=True,
        keep_empty_images=keep_empty,
        subset=None,
        subset_seed=0,
        skip_bad_items=False,
        quiet=True,
    ).dataset


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_polygon_rle_and_crowd(tiny_coco_dir: Path) -> None:
    dataset = _dataset(tiny_coco_dir)
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8  # the detector normalises
    assert target["labels"].tolist() == [1, 2]  # category 7 → 1, 9 → 2; the crowd region is not a target
    assert target["boxes"].tolist() == [[2, 3, 10, 11], [20, 5, 30, 15]]
    assert target["masks"].shape == (2, 30, 40)
    assert target["masks"][1].sum() == 100 and _mask_box(target["masks"][1]) == [20, 5, 30, 15]
    assert _mask_box(target["masks"][0]) == [2, 3, 10, 11]  # polygon rasterised inside its box
    _, compressed = dataset[1]
    assert torch.equal(compressed["masks"][0], target["masks"][1])  # compressed RLE == uncompressed RLE


def test_images_without_annotations_kept_or_dropped(tiny_coco_dir: Path) -> None:
    assert _dataset(tiny_coco_dir, keep_empty=True).image_ids == [1, 2, 3]
    assert _dataset(tiny_coco_dir, keep_empty=False).image_ids == [1, 2]
    _, empty = _dataset(tiny_coco_dir)[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40)


def test_flip_keeps_boxes_equal_to_mask_boxes(synth_dir: Path) -> None:
    index = CocoIndex.from_json(synth_dir / "annotations" / "instances_train.json")
    plain = CocoDetection(index, synth_dir / "train", list(index.images)[:20], build_train_transforms([128], 128, 0.0))
    flipped = CocoDetection(
        index, synth_dir / "train", list(index.images)[:20], build_train_transforms([128], 128, 1.0)
    )
    checked = 0
    for i in range(20):
        image, target = plain[i]
        image_f, target_f = flipped[i]
        if image.shape[1] != min(image.shape[1:]):  # portrait: the shorter side 96 is resized to 128; skip
            continue
        assert torch.equal(image_f, image.flip(-1))
        assert torch.equal(target_f["masks"], target["masks"].flip(-1))
        for box, mask in zip(target_f["boxes"], target_f["masks"], strict=True):
            assert box.tolist() == _mask_box(mask)
            checked += 1
    assert checked > 20


def test_resize_scales_boxes_and_masks(tiny_coco_dir: Path) -> None:
    image, target = _dataset(tiny_coco_dir, sizes=(60,))[0]
    assert image.shape == (3, 60, 80)
    assert target["boxes"].tolist() == [[4, 6, 20, 22], [40, 10, 60, 30]]
    assert target["masks"].shape == (2, 60, 80) and target["masks"][1].sum() == 400


def test_item_seed_fixes_the_random_transform(synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = CocoIndex.from_json(synth_dir / "annotations" / "instances_train.json")
    dataset = CocoDetection(
        index,
        synth_dir / "train",
        list(index.images)[:4],
        build_train_transforms([64, 80, 96, 112], 200, 0.5),
    )
    shapes = {dataset[(0, seed)][0].shape for seed in range(12)}
    assert len(shapes) > 1  # the seed changes the drawn size
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, second = dataset[(0, 7)][0], dataset[(0, 7)][0]
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched

    # Only the CPU generator is seeded: a GPU's (the training process's, with 0 workers) is left alone, and a
    # loader's worker does not pay for queueing a seed for CUDA it never starts.
    def no_gpu_seed(*args: object, **kwargs: object) -> None:
        raise AssertionError("an item's seed reached a GPU generator")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_gpu_seed)
    assert torch.equal(dataset[(0, 7)][0], first)


def test_subsets_are_nested_and_reproducible() -> None:
    ids = list(range(1000, 3000, 3))
    small, large = nested_subset(ids, 50, seed=3), nested_subset(ids, 400, seed=3)
    assert set(small) <= set(large)
    assert small == nested_subset(list(reversed(ids)), 50, seed=3)
    assert small != nested_subset(ids, 50, seed=4)
    with pytest.raises(ScratchdetError, match=r"data\.train_subset=5000 is larger than the training set"):
        nested_subset(ids, 5000, seed=0)


def test_training_batches_depend_only_on_seed_and_iteration() -> None:
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
    stream = TrainingBatches(11, 4, seed=2, aspect_groups=groups)
    batches = [b for _, b in zip(range(12), stream, strict=False)]
    for batch in batches:
        assert len({groups[p] for p, _ in batch}) == 1  # one aspect group per batch
    resumed = TrainingBatches(11, 4, seed=2, aspect_groups=groups, start_iteration=7)
    assert [b for _, b in zip(range(5), resumed, strict=False)] == batches[7:]
    halves = [TrainingBatches(11, 4, seed=2, aspect_groups=groups, rank=r, world_size=2) for r in (0, 1)]
    first = [next(iter(h)) for h in halves]
    assert first[0] + first[1] == batches[0]


def test_every_image_is_visited_each_epoch_without_grouping() -> None:
    stream = iter(TrainingBatches(12, 4, seed=0))
    seen = [p for _ in range(3) for p, _ in next(stream)]
    assert sorted(seen) == list(range(12))


def test_subset_cut_in_prepare(synth_dir: Path) -> None:
    transforms = build_train_transforms([64], 128, 0.5)
    prepared = prepare_train_dataset(
        synth_dir / "annotations" / "instances_train.json",
        synth_dir / "train",
        transforms,
        with_masks=False,
        keep_empty_images=False,
        subset=10,
        subset_seed=0,
        skip_bad_items=False,
        quiet=True,
    )
    assert len(prepared.dataset) == 10
    assert "masks" not in prepared.dataset[0][1]
    assert np.all(np.diff(prepared.dataset.image_ids) > 0)
