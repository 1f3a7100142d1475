"""Packed training batches: a few buffers to copy to the device, the same images and targets out of them."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from scratchdet.data.batching import PackedBatch, collate, pack, to_device


def _detection_item(height: int, width: int, objects: int, seed: int) -> tuple[torch.Tensor, dict[str, object]]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    boxes = torch.rand(objects, 4, generator=generator) * 40
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.randint(1, 4, (objects,), generator=generator),
        "masks": tv_tensors.Mask(torch.randint(0, 2, (objects, height, width), generator=generator, dtype=torch.uint8)),
        "image_id": 100 + seed,
        "orig_size": (height, width),
        "sample_seed": seed * 7,
    }
    return image, target


def _same(a: object, b: object) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def test_a_packed_batch_gives_back_what_collate_gives_from_one_buffer_per_kind_of_tensor() -> None:
    # Images and masks of two sizes, an image without objects: every way of packing is taken.
    items = [_detection_item(64, 48, 3, 0), _detection_item(48, 64, 0, 1), _detection_item(64, 48, 5, 2)]
    packed = pack(items)
    assert sorted(packed.buffers) == ["boxes", "image", "labels", "masks"]  # 4 copies to the device, not 4 an image
    images, targets = to_device(packed, torch.device("cpu"))
    expected_images, expected_targets = collate(items)
    assert all(_same(a, b) for a, b in zip(images, expected_images, strict=True))
    for target, expected in zip(targets, expected_targets, strict=True):
        assert list(target) == list(expected)  # the same fields in the same order
        assert all(_same(target[key], expected[key].as_subclass(torch.Tensor) if torch.is_tensor(expected[key])
                         else expected[key]) for key in expected)  # fmt: skip
    # A collated batch (the evaluation loaders') goes to the device as it did.
    assert all(_same(a, b) for a, b in zip(to_device(collate(items), torch.device("cpu"))[0], images, strict=True))


def test_one_size_of_image_and_a_number_an_item_come_back_from_single_splits() -> None:
    labels = [torch.tensor(5), torch.tensor(2), torch.tensor(7)]
    images = [torch.full((3, 8, 8), float(i)) for i in range(3)]
    packed = PackedBatch(images, [{"label": label} for label in labels])
    assert packed.buffers["image"].shape == (9, 8, 8) and packed.buffers["label"].shape == (3,)
    images_back, targets = packed.to(torch.device("cpu"))
    assert [int(t["label"]) for t in targets] == [5, 2, 7] and targets[0]["label"].dim() == 0
    assert all(torch.equal(a, b) for a, b in zip(images_back, images, strict=True))


def test_a_field_of_mixed_types_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="batch field 'labels'"):
        PackedBatch(
            [torch.zeros(3, 4, 4)] * 2, [{"labels": torch.zeros(2)}, {"labels": torch.zeros(2, dtype=torch.int64)}]
        )
