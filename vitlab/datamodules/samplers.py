"""The training sampler (the Mini-ViT seed's repeated augmentation, per-epoch seeded, rank-aware), the
fixed class-interleaved evaluation order, and seed derivation for data streams."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler, get_worker_info

from vitlab.errors import ConfigError
from vitlab.utils import derive_seed


class RepeatedAugmentationSampler(DistributedSampler):
    """Yields every index ``repeats`` times per epoch, the copies scattered over the whole epoch.

    Each epoch is the list of ``repeats`` copies of ``0..num_samples-1`` in a uniformly random
    order, so the copies of an image land in unrelated batches and get independent augmentations;
    an epoch is ``repeats`` times longer than the dataset (unlike DeiT's RASampler, which keeps the
    epoch length and puts the copies side by side). The order depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch. Where it is not called (a wrapper that
    does not forward it), each new iteration advances the epoch by one so epochs still differ.
    ``shuffle=False`` yields ``0..num_samples-1`` ``repeats`` times in order, for debugging.

    ``with_seeds=True`` yields ``(index, seed)`` pairs instead of indices: ``seed`` is drawn for
    each position of the epoch from ``(seed, epoch, rank)`` alone, and :class:`SeededItems` seeds the
    augmentation RNGs with it before loading the item. The augmentation of every sample then depends
    neither on the loader worker that happens to load it nor on how long that worker has lived
    (persistent or not, any number of workers, before or after a resume).

    :meth:`resume_at` makes the next iteration of an epoch skip the samples a resumed run has
    already trained on, so a run stopped in the middle of an epoch continues with the next batch.

    It is the training sampler also with ``repeats=1``: an order that depends only on ``(seed,
    epoch)``, and not on a generator's history, is what lets a resumed run see the same batches as
    an uninterrupted one. With several processes (``num_replicas``/``rank``, by default from
    ``torch.distributed``) each rank takes every ``num_replicas``-th index of the same epoch order,
    padded by wrapping around to an equal share; being a ``DistributedSampler``, Lightning uses it
    as it is instead of wrapping it.
    """

    def __init__(
        self,
        num_samples: int,
        repeats: int = 3,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        with_seeds: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(f"recipe.repeated_aug: expected an integer >= 1, got {repeats!r}")
        # DistributedSampler.__init__ is not called: it wants a dataset and a process group, and only
        # the type matters to Lightning (it then leaves the sampler as it is).
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.num_samples = num_samples
        self.repeats = repeats
        self.shuffle = shuffle
        self.seed = seed
        self.with_seeds = with_seeds
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self._iterated = False
        self._epoch_set_since_iter = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_set_since_iter = True

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """When epoch ``epoch`` is next iterated, skip this rank's first ``samples_done`` samples."""
        self._resume = (epoch, samples_done) if samples_done > 0 else None

    def __len__(self) -> int:
        return -(-self.num_samples * self.repeats // self.num_replicas)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        if self._iterated and not self._epoch_set_since_iter:
            self.epoch += 1
        self._iterated = True
        self._epoch_set_since_iter = False

        indices = torch.arange(self.num_samples).repeat(self.repeats)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "repeated-aug", self.epoch))
            # One uniform shuffle of the repeated list has the same distribution as the seed's
            # "shuffle, concatenate copies, shuffle again", at half the cost.
            indices = indices[torch.randperm(len(indices), generator=generator)]
        if self.num_replicas > 1:
            padded = len(self) * self.num_replicas
            indices = torch.cat([indices, indices[: padded - len(indices)]])[self.rank :: self.num_replicas]
        seeds = None
        if self.with_seeds:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "augment", self.epoch, self.rank))
            seeds = torch.randint(0, 2**63 - 1, (len(indices),), generator=generator)
        if self._resume is not None and self._resume[0] == self.epoch:
            done = self._resume[1]
            indices = indices[done:]
            seeds = None if seeds is None else seeds[done:]
        self._resume = None
        if seeds is None:
            return iter(indices.tolist())
        return zip(indices.tolist(), seeds.tolist())


class SeededItems(Dataset):
    """``dataset[index]`` for ``(index, seed)`` items, with the augmentation RNGs (torch, numpy,
    python) seeded from ``seed`` first; see :class:`RepeatedAugmentationSampler` ``with_seeds``.

    In a loader worker the worker's own RNGs are reseeded. In the main process (``num_workers=0``)
    they are the training RNGs (dropout, mixing), so their state is put back afterwards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | int) -> Any:
        if isinstance(item, int):
            # A plain index: Lightning's overfit_batches swaps the sampler for a sequential one, whose
            # items carry no seed; the augmentations then draw from the RNGs as they are.
            return self.dataset[item]
        index, seed = item
        if get_worker_info() is not None:
            _seed_all(seed)
            return self.dataset[index]
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            _seed_all(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def class_interleaved_order(labels: Sequence[int] | np.ndarray | None, num_samples: int, seed: int) -> list[int]:
    """A fixed order of ``0..num_samples-1`` in which every prefix is a class-balanced sample.

    Each class's items are shuffled (seeded by ``seed`` only) and the classes interleaved in
    proportion to their sizes: item ``j >= 1`` of a class of ``n`` items is placed at ``(j + u) / n``,
    with ``u`` one uniform offset per class, and every class's first item before all of those. So the
    first ``num_classes`` items hold every class once (a first batch at least that large holds every
    class), and any prefix holds each class in proportion to its size, give or take one image or two.
    With equal class sizes every run of ``num_classes`` items holds each class once. Without
    ``labels`` it is a plain seeded permutation.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(num_samples).tolist()
    labels = np.asarray(labels)
    if len(labels) != num_samples:
        raise ValueError(f"expected {num_samples} labels, got {len(labels)}")
    classes = np.unique(labels)
    largest = max(int(np.sum(labels == label)) for label in classes) if num_samples else 1
    position = np.empty(num_samples)
    for label in classes:
        members = rng.permutation(np.flatnonzero(labels == label))
        offset = rng.random()
        position[members] = (np.arange(len(members)) + offset) / len(members)
        position[members[0]] = offset / largest  # before every class's second item
    return np.argsort(position, kind="stable").tolist()


class FixedOrderSampler(Sampler[int]):
    """Yields the same list of indices every epoch: the evaluation order of the val and test
    loaders (see :func:`class_interleaved_order`), so a ``limit_*_batches`` prefix is representative
    and the same images are scored in every epoch and every run. Lightning splits it between the
    processes of a multi-device run."""

    def __init__(self, order: Sequence[int]) -> None:
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
