"""Anchor/RoI sampling seeded per image: independent of the batch an image is in, torchvision's counts."""

from __future__ import annotations

import torch

from scratchdet.modeling.sampling import ROI_STREAM, RPN_STREAM, SeededSampler


def _matched(seed: int) -> torch.Tensor:
    """Match results of 300 candidates: -1 ignored, 0 background, ≥1 the matched object."""
    return torch.randint(-1, 4, (300,), generator=torch.Generator().manual_seed(seed))


def test_an_images_sample_does_not_depend_on_its_batch() -> None:
    sampler = SeededSampler(64, 0.25, ROI_STREAM)
    sampler.seeds = [11, 22, 33]
    positives, negatives = sampler([_matched(1), _matched(2), _matched(3)])
    sampler.seeds = [22]
    alone_positive, alone_negative = sampler([_matched(2)])
    assert torch.equal(positives[1], alone_positive[0]) and torch.equal(negatives[1], alone_negative[0])


def test_counts_and_classes_are_torchvisions() -> None:
    sampler = SeededSampler(64, 0.25, RPN_STREAM)
    sampler.seeds = [5]
    matched = _matched(4)
    positive, negative = (mask[0].bool() for mask in sampler([matched]))
    assert int(positive.sum()) == 16 and int(negative.sum()) == 48
    assert bool((matched[positive] >= 1).all()) and bool((matched[negative] == 0).all())


def test_streams_and_seeds_give_different_draws_and_no_seed_falls_back() -> None:
    draws = []
    for stream, seed in ((RPN_STREAM, 5), (ROI_STREAM, 5), (RPN_STREAM, 6)):
        sampler = SeededSampler(64, 0.25, stream)
        sampler.seeds = [seed]
        draws.append(sampler([_matched(4)])[1][0])
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    unseeded = SeededSampler(64, 0.25, RPN_STREAM)
    torch.manual_seed(0)
    first = unseeded([_matched(4)])[1][0]
    torch.manual_seed(0)
    assert torch.equal(first, unseeded([_matched(4)])[1][0])  # the global stream, as torchvision does
