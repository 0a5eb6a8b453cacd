"""The training sampler (the Mini-ViT seed's repeated augmentation, per-epoch seeded, rank-aware) and
seed derivation for data streams."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from vitlab.errors import ConfigError
from vitlab.utils import derive_seed

__all__ = ["RepeatedAugmentationSampler", "derive_seed"]


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
