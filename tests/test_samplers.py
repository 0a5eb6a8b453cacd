"""The Mini-ViT seed's repeated-augmentation sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vitlab.datamodules import RepeatedAugmentationSampler
from vitlab.errors import ConfigError


def test_length_is_samples_times_repeats():
    sampler = RepeatedAugmentationSampler(50, repeats=3)
    assert len(sampler) == 150
    assert len(list(sampler)) == 150


def test_every_index_appears_repeats_times_per_epoch():
    sampler = RepeatedAugmentationSampler(97, repeats=3, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        counts = Counter(sampler)
        assert set(counts) == set(range(97))
        assert set(counts.values()) == {3}


def test_same_seed_and_epoch_give_the_same_order():
    first, second = RepeatedAugmentationSampler(100, seed=1), RepeatedAugmentationSampler(100, seed=1)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second)


def test_seeds_and_epochs_change_the_order():
    sampler = RepeatedAugmentationSampler(100, seed=1)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    other_seed = RepeatedAugmentationSampler(100, seed=2)
    other_seed.set_epoch(0)
    assert list(other_seed) != epoch0


def test_set_epoch_is_respected():
    sampler = RepeatedAugmentationSampler(100, seed=3)
    sampler.set_epoch(7)
    epoch7 = list(sampler)
    sampler.set_epoch(2)
    list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == epoch7


def test_epoch_advances_by_itself_without_set_epoch():
    sampler = RepeatedAugmentationSampler(100, seed=3)
    epochs = [list(sampler) for _ in range(3)]
    assert sampler.epoch == 2
    assert epochs[0] != epochs[1] != epochs[2]
    reference = RepeatedAugmentationSampler(100, seed=3)
    reference.set_epoch(2)
    assert list(reference) == epochs[2]


def test_copies_are_scattered_over_the_epoch():
    n, repeats = 200, 3
    order = list(RepeatedAugmentationSampler(n, repeats=repeats, seed=0))
    positions: dict[int, list[int]] = {}
    for position, index in enumerate(order):
        positions.setdefault(index, []).append(position)
    spreads = [max(p) - min(p) for p in positions.values()]
    # Adjacent copies (DeiT-style) would have a spread of repeats - 1; scattered ones span a large
    # part of the epoch (expected spread of 3 uniform positions is half the epoch).
    assert sum(spread <= repeats - 1 for spread in spreads) <= 2
    assert sum(spreads) / len(spreads) > 0.3 * n * repeats


def test_no_shuffle_repeats_the_range_in_order():
    assert list(RepeatedAugmentationSampler(4, repeats=2, shuffle=False)) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_bad_repeats_names_the_recipe_key():
    with pytest.raises(ConfigError, match="recipe.repeated_aug"):
        RepeatedAugmentationSampler(10, repeats=0)


def test_class_interleaved_order_balances_every_prefix():
    from vitlab.datamodules.samplers import class_interleaved_order

    labels = np.repeat(np.arange(4), 25)  # stored class by class
    order = class_interleaved_order(labels, 100, seed=3)
    assert sorted(order) == list(range(100))
    for start in range(0, 100, 4):  # every run of 4 holds each class once
        assert sorted(labels[order[start : start + 4]].tolist()) == [0, 1, 2, 3]
    assert order == class_interleaved_order(labels, 100, seed=3) != class_interleaved_order(labels, 100, seed=4)
    # Unequal classes: the first 3 hold every class, and every prefix each class in proportion.
    labels = np.repeat(np.arange(3), [5, 30, 65])
    for seed in range(5):
        order = class_interleaved_order(labels, 100, seed=seed)
        assert sorted(labels[order[:3]].tolist()) == [0, 1, 2]
        for k in range(1, 101):
            counts = np.bincount(labels[order[:k]], minlength=3)
            assert np.all(np.abs(counts - k * np.array([0.05, 0.3, 0.65])) <= 2), (k, counts)
    # Without labels: a seeded permutation.
    assert sorted(class_interleaved_order(None, 7, seed=1)) == list(range(7))
