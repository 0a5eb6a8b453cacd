"""The training sampler (the Mini-ViT seed's repeated augmentation, per-epoch seeded, rank-aware), the
fixed class-interleaved evaluation order, and seed derivation for data streams."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from vitlab.errors import ConfigError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on all of ``parts`` (non-negative ints, or strings naming a use).

    Unlike ``seed + epoch``, (seed 0, epoch 1) and (seed 1, epoch 0) give unrelated streams, so
    runs with neighbouring seeds do not replay each other's data order one epoch apart; a string
    part keeps streams for different uses of the same seed apart.
    """
    entropy = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class RepeatedAugmentationSampler(DistributedSampler):
    """Yields every index ``repeats`` times per epoch, the copies scattered over the whole epoch.

    Each epoch is the list of ``repeats`` copies of ``0..num_samples-1`` in a uniformly random
    order, so the copies of an image land in unrelated batches and get independent augmentations;
    an epoch is ``repeats`` times longer than the dataset (unlike DeiT's RASampler, which keeps the
    epoch length and puts the copies side by side). The order depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch. Where it is not called (a wrapper that
    does not forward it), each new iteration advances the epoch by one so epochs still differ.
    ``shuffle=False`` yields ``0..num_samples-1`` ``repeats`` times in order, for debugging.

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
        self.epoch = 0
        self._iterated = False
        self._epoch_set_since_iter = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_set_since_iter = True

    def __len__(self) -> int:
        return -(-self.num_samples * self.repeats // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
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
        return iter(indices.tolist())


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
