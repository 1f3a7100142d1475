"""Anchor/RoI sampling keyed per image: torchvision's counts, uniform subsets, independent of the batch.

The keys are integer arithmetic, so every count below is exact on every machine."""

from __future__ import annotations

import itertools
from collections import Counter

import torch

from scratchdet.modeling.sampling import ROI_STREAM, RPN_STREAM, balanced_sample, candidate_keys, image_keys

CPU = torch.device("cpu")


def _sample(seeds: list[int], labels: torch.Tensor, size: int = 64, stream: int = ROI_STREAM) -> tuple:
    index = torch.arange(labels.shape[1]).expand_as(labels)
    keys = candidate_keys(image_keys(seeds, stream, CPU), index)
    return balanced_sample(labels, keys, size, 0.25)


def _labels(seed: int, n: int = 300) -> torch.Tensor:
    """Match results of n candidates: -1 ignored, 0 background, >=1 the matched object."""
    return torch.randint(-1, 4, (n,), generator=torch.Generator().manual_seed(seed))


def test_counts_and_classes_are_torchvisions() -> None:
    labels = torch.stack([_labels(1), _labels(2)])
    labels[1, :280] = -1  # few candidates: every positive and negative is taken
    positive, negative = _sample([5, 6], labels)
    assert positive[0].sum() == 16 and negative[0].sum() == 48
    assert positive[1].sum() == (labels[1] >= 1).sum() and negative[1].sum() == (labels[1] == 0).sum()
    assert bool((labels[positive] >= 1).all()) and bool((labels[negative] == 0).all())


def test_an_images_sample_does_not_depend_on_its_batch() -> None:
    batch = torch.stack([_labels(1), _labels(2), _labels(3)])
    positive, negative = _sample([11, 22, 33], batch)
    alone_positive, alone_negative = _sample([22], batch[1:2])
    assert torch.equal(positive[1], alone_positive[0]) and torch.equal(negative[1], alone_negative[0])


def test_streams_and_seeds_give_different_draws() -> None:
    labels = _labels(4)[None]
    draws = [_sample([seed], labels, stream=stream)[1] for stream, seed in ((RPN_STREAM, 5), (ROI_STREAM, 5),
                                                                             (RPN_STREAM, 6))]  # fmt: skip
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[0], _sample([5], labels, stream=RPN_STREAM)[1])


def test_every_subset_is_equally_likely() -> None:
    # 2 of 5 positives over 3,000 seeds: each of the 10 subsets has probability 1/10. A chi-square statistic with
    # 9 degrees of freedom exceeds 27.9 with probability 0.001; the draws are exact integers, so this is no flake.
    labels = torch.tensor([[1, 1, 1, 1, 1] + [-1] * 20])
    seeds = list(range(3000))
    index = torch.arange(25).expand(len(seeds), -1)
    keys = candidate_keys(image_keys(seeds, ROI_STREAM, CPU), index)
    positive, _ = balanced_sample(labels.expand(len(seeds), -1), keys, 8, 0.25)
    subsets = Counter(tuple(row.nonzero()[:, 0].tolist()) for row in positive)
    assert set(subsets) == set(itertools.combinations(range(5), 2))
    expected = len(seeds) / 10
    assert sum((count - expected) ** 2 / expected for count in subsets.values()) < 27.9, subsets
