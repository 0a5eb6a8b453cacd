"""``data.pipeline=device``: the training split held as uint8 on the training device, each batch
augmented there, per sample.

The workers pipeline decodes and augments one image at a time in DataLoader workers (PIL or
torchvision v2 on single images). Here the train split is decoded once (:mod:`.tensor_cache`), put on
the device the model trains on, and the train loader yields only *positions* into it; the
datamodule's ``on_after_batch_transfer`` hook gathers the batch on the device and runs
:class:`DeviceAugment`, so the LightningModules see the same ``(images, labels)`` batches as with ``workers``
(CutMix/MixUp stay in the module, timm's ``Mixup``, on the device).

What does the per-sample work, in the workers pipeline's order:

=====================  ===================================================================
resize to img_size     torchvision v2 ``functional.resize`` on the whole batch (the same for
                       every image; uint8, antialiased, the dataset's interpolation)
flip, padded crop      Kornia ``RandomHorizontalFlip`` / ``RandomCrop(padding, fill 0)``: per-sample
                       parameters on a float copy of the batch
AutoAugment,           by hand: the op, magnitude and sign are drawn per sample from torchvision's own
RandAugment,           tables (``v2.AutoAugment._policies``, ``v2.RandAugment._AUGMENTATION_SPACE``,
randaug_legacy         :data:`.randaug_legacy.LEGACY_OPS`); the samples that drew the same op and
                       magnitude are then transformed together by torchvision's own kernel for that op,
                       on uint8 as in the workers pipeline. Kornia's AutoAugment and RandAugment pick one
                       sub-policy for the whole batch, and torchvision's draw once per call.
normalise              Kornia ``enhance.Normalize``
random erasing         by hand: torchvision's parameter draw (up to 10 tries for a box that fits,
                       else no erasing) vectorised over the batch, N(0, 1) noise in the box. Kornia's
                       RandomErasing clips the box instead of retrying and fills a constant.
=====================  ===================================================================

Randomness comes from two generators of the pipeline's own, seeded from ``(seed, rank)``: one on
the CPU for every parameter (Kornia samples from torch's global CPU generator, so it runs with that
generator's state swapped in and out) and one on the data device for the erasing noise. Their
states travel in the checkpoint through the datamodule's ``state_dict``, so a resumed run draws what
the uninterrupted one would. Augmentation is then independent of the model's own random streams
(dropout, mixing partners).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import kornia
import kornia.augmentation as K
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .datasets import ArrayImageDataset
from .randaug_legacy import LEGACY_OPS, LegacyRandAugment
from .samplers import derive_seed
from .settings import check_device_augment
from .transforms import _AUTO_AUGMENT_POLICIES, _interpolation, resolve_augment


@contextlib.contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Run code that samples from torch's global CPU generator (Kornia) on ``generator``'s stream:
    the global state is put back afterwards, and ``generator`` continues where the code stopped."""
    outer = torch.get_rng_state()
    torch.set_rng_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(torch.get_rng_state())
        torch.set_rng_state(outer)


def apply_grouped(
    images: torch.Tensor, keys: Sequence[Hashable | None], op: Callable[[torch.Tensor, Any], torch.Tensor]
) -> torch.Tensor:
    """``images[b] = op(images[b], keys[b])`` for every sample whose key is not None, calling ``op`` once
    per distinct key on all the samples that share it (a batched kernel call per group)."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(index)
    if not groups:
        return images
    images = images.clone()
    for key, members in groups.items():
        index = torch.tensor(members, device=images.device)
        images[index] = op(images[index], key)
    return images


class PerSampleAutoAugment:
    """torchvision's AutoAugment (``policy``: cifar10 / imagenet / svhn), one sub-policy per sample."""

    def __init__(self, policy: str) -> None:
        self.transform = v2.AutoAugment(_AUTO_AUGMENT_POLICIES[policy])

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[Any]]:
        """Per op slot, each sample's ``(op, signed magnitude)``, or None where the op's coin said no."""
        space, policies = self.transform._AUGMENTATION_SPACE, self.transform._policies
        tables = {op: fn(10, height, width) for op, (fn, _) in space.items()}
        chosen = torch.randint(len(policies), (batch,), generator=generator).tolist()
        slots = []
        for slot in range(max(len(p) for p in policies)):
            coins = torch.rand(batch, generator=generator).tolist()
            signs = torch.rand(batch, generator=generator).tolist()
            keys: list[tuple[str, float] | None] = []
            for b in range(batch):
                policy = policies[chosen[b]]
                if slot >= len(policy) or not coins[b] <= policy[slot][1]:
                    keys.append(None)
                    continue
                op, _, magnitude_index = policy[slot]
                magnitude = 0.0 if tables[op] is None else float(tables[op][magnitude_index])
                if space[op][1] and signs[b] <= 0.5:
                    magnitude = -magnitude
                keys.append((op, magnitude))
            slots.append(keys)
        return slots

    def apply(self, images: torch.Tensor, key: tuple[str, float]) -> torch.Tensor:
        t = self.transform
        return t._apply_image_or_video_transform(images, key[0], key[1], interpolation=t.interpolation, fill=t._fill)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for keys in self.plan(images.shape[0], *images.shape[-2:], generator):
            images = apply_grouped(images, keys, self.apply)
        return images


class PerSampleRandAugment(PerSampleAutoAugment):
    """torchvision's RandAugment(num_ops, magnitude): each sample draws its own ``num_ops`` ops."""

    def __init__(self, num_ops: int, magnitude: int) -> None:
        self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[Any]]:
        t = self.transform
        ops = list(t._AUGMENTATION_SPACE)
        magnitudes = {}
        for op, (fn, _) in t._AUGMENTATION_SPACE.items():
            table = fn(t.num_magnitude_bins, height, width)
            magnitudes[op] = 0.0 if table is None else float(table[t.magnitude])
        slots = []
        for _ in range(t.num_ops):
            drawn = torch.randint(len(ops), (batch,), generator=generator).tolist()
            signs = torch.rand(batch, generator=generator).tolist()
            keys = []
            for b in range(batch):
                op = ops[drawn[b]]
                magnitude = magnitudes[op]
                if t._AUGMENTATION_SPACE[op][1] and signs[b] <= 0.5:
                    magnitude = -magnitude
                keys.append((op, magnitude))
            slots.append(keys)
        return slots


class PerSampleLegacyRandAugment:
    """The clear-vit seed's RandAugment (:class:`.randaug_legacy.LegacyRandAugment`), per sample."""

    def __init__(self) -> None:
        self.transform = LegacyRandAugment()

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[str | None]]:
        slots = []
        for _ in range(self.transform.num_ops):
            drawn = torch.randint(len(LEGACY_OPS), (batch,), generator=generator).tolist()
            coins = torch.rand(batch, generator=generator).tolist()
            slots.append([
                None if LEGACY_OPS[d] == "invert" and coins[b] >= self.transform.invert_prob else LEGACY_OPS[d]
                for b, d in enumerate(drawn)
            ])
        return slots

    def apply(self, images: torch.Tensor, op: str) -> torch.Tensor:
        return self.transform.apply_op(images, op)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for keys in self.plan(images.shape[0], *images.shape[-2:], generator):
            images = apply_grouped(images, keys, self.apply)
        return images


class BatchRandomErasing:
    """torchvision v2 ``RandomErasing(p, scale, ratio, value="random")``, drawn per sample for a batch.

    Per sample: with probability ``p``, up to 10 tries of an area fraction ``U(scale)`` and a log-uniform
    aspect ratio in ``ratio``; the first box that fits strictly inside the image is placed uniformly and
    filled with N(0, 1) noise; when none fits, the sample is left as it is.
    """

    tries = 10

    def __init__(self, p: float, scale: Sequence[float], ratio: Sequence[float]) -> None:
        self.p = float(p)
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def boxes(self, batch: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``erase`` (bool), ``top``, ``left``, ``height``, ``width`` per sample (int64, on the CPU)."""
        f64 = torch.float64
        apply = torch.rand(batch, generator=generator, dtype=f64) < self.p
        low, high = self.scale
        area = height * width * (low + (high - low) * torch.rand(batch, self.tries, generator=generator, dtype=f64))
        lr0, lr1 = self.log_ratio
        aspect = torch.exp(lr0 + (lr1 - lr0) * torch.rand(batch, self.tries, generator=generator, dtype=f64))
        h = torch.sqrt(area * aspect).round()
        w = torch.sqrt(area / aspect).round()
        fits = (h < height) & (w < width)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = torch.floor(torch.rand(batch, generator=generator, dtype=f64) * (height - h + 1))
        left = torch.floor(torch.rand(batch, generator=generator, dtype=f64) * (width - w + 1))
        as_int = lambda t: t.to(torch.int64)  # noqa: E731
        return {"erase": apply & fits.any(dim=1), "top": as_int(top), "left": as_int(left),
                "height": as_int(h), "width": as_int(w)}

    def __call__(self, images: torch.Tensor, generator: torch.Generator, noise: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = images.shape
        box = self.boxes(batch, height, width, generator)
        chosen = box["erase"].nonzero().squeeze(1)
        if chosen.numel() == 0:
            return images
        device = images.device
        top, left, h, w = (box[k][chosen].to(device) for k in ("top", "left", "height", "width"))
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        mask = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        fill = torch.randn((len(chosen), channels, height, width), generator=noise, device=device, dtype=images.dtype)
        chosen = chosen.to(device)
        images = images.clone()
        images[chosen] = torch.where(mask, fill, images[chosen])
        return images


class Generators:
    """The pipeline's random streams: ``params`` (CPU, every parameter draw) and ``noise`` (on the data
    device, created at the first batch) for the erasing noise."""

    def __init__(self, seed: int, rank: int) -> None:
        self.params = torch.Generator().manual_seed(derive_seed(seed, "device-augment", rank))
        self._noise_seed = derive_seed(seed, "device-noise", rank)
        self.noise: torch.Generator | None = None
        self._pending_noise: tuple[str, torch.Tensor] | None = None

    def noise_on(self, device: torch.device) -> torch.Generator:
        if self.noise is None or self.noise.device.type != device.type:
            self.noise = torch.Generator(device=device).manual_seed(self._noise_seed)
            if self._pending_noise is not None and self._pending_noise[0] == device.type:
                self.noise.set_state(self._pending_noise[1])
            self._pending_noise = None
        return self.noise

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"params": self.params.get_state()}
        if self.noise is not None:
            state["noise"] = self.noise.get_state().cpu()
            state["noise_device"] = self.noise.device.type
        elif self._pending_noise is not None:
            state["noise_device"], state["noise"] = self._pending_noise
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.params.set_state(state["params"])
        if "noise" in state:
            self.noise = None
            self._pending_noise = (state["noise_device"], state["noise"])


class DeviceAugment:
    """A recipe's training augmentation (``recipe.augment``) for a uint8 ``B x 3 x H x W`` batch on any
    device; returns the normalised float32 ``B x 3 x img_size x img_size`` batch.

    ``native_size`` is the stored images' ``(height, width)``; they are resized to ``img_size`` first
    when it differs. ``random_resized_crop`` (the ImageNet-100 recipe) is not supported here.
    """

    def __init__(
        self,
        augment: Mapping[str, Any] | None,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        native_size: tuple[int, int],
        interpolation: str = "bicubic",
    ) -> None:
        aug = resolve_augment(augment)
        check_device_augment(aug)
        self.img_size = img_size
        self.resize = tuple(native_size) != (img_size, img_size)
        self.interpolation = _interpolation(interpolation)
        self.flip = K.RandomHorizontalFlip(p=0.5) if aug["hflip"] else None
        padding = aug["crop_padding"]
        self.crop = K.RandomCrop((img_size, img_size), padding=padding, fill=0.0) if padding > 0 else None
        self.policy: PerSampleAutoAugment | PerSampleLegacyRandAugment | None = None
        if aug["auto_augment"] is not None:
            self.policy = PerSampleAutoAugment(aug["auto_augment"])
        elif aug["rand_augment"] is not None:
            self.policy = PerSampleRandAugment(**aug["rand_augment"])
        elif aug["randaug_legacy"]:
            self.policy = PerSampleLegacyRandAugment()
        self.normalize = kornia.enhance.Normalize(torch.tensor(mean), torch.tensor(std))
        self.erasing = (
            BatchRandomErasing(aug["random_erasing"], aug["random_erasing_scale"], aug["random_erasing_ratio"])
            if aug["random_erasing"] > 0
            else None
        )

    def __call__(self, images: torch.Tensor, generators: Generators) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected a uint8 B x C x H x W batch, got {images.dtype} {tuple(images.shape)}")
        x = images
        if self.resize:
            x = TF.resize(x, [self.img_size, self.img_size], interpolation=self.interpolation, antialias=True)
        x = TF.to_dtype(x, torch.float32, scale=True)  # exact: k / 255, so the round trip below is lossless
        if self.flip is not None or self.crop is not None:
            with drawing_from(generators.params):
                if self.flip is not None:
                    x = self.flip(x)
                if self.crop is not None:
                    x = self.crop(x)
        if self.policy is not None:  # on uint8, as the workers pipeline applies it
            x = self.policy(x.mul(255).round_().to(torch.uint8), generators.params)
            x = TF.to_dtype(x, torch.float32, scale=True)
        x = self.normalize(x)
        if self.erasing is not None:
            x = self.erasing(x, generators.params, generators.noise_on(x.device))
        return x.contiguous()


class _Positions(Dataset):
    """``0..n-1``: the train loader's items are positions into the train split; collated, a batch is a
    1-D int64 tensor, which the datamodule's ``on_after_batch_transfer`` turns into images."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


def _array_split(train_set: Dataset) -> tuple[ArrayImageDataset, np.ndarray]:
    """The uint8 array dataset under the train set and the positions in it of the train set's items."""
    if isinstance(train_set, Subset):
        inner, positions = _array_split(train_set.dataset)
        return inner, positions[np.asarray(train_set.indices, dtype=np.int64)]
    if isinstance(train_set, ArrayImageDataset):
        return train_set, np.arange(len(train_set), dtype=np.int64)
    raise TypeError(f"data.pipeline=device needs the train split as a uint8 array, got {type(train_set).__name__}")


class DevicePipeline:
    """The train split on the training device and its per-batch augmentation (see the module doc)."""

    def __init__(self, train_set: Dataset, augment: DeviceAugment, seed: int, rank: int) -> None:
        split, positions = _array_split(train_set)
        self.augment = augment
        self.generators = Generators(seed, rank)
        # On the CPU the memory-mapped cache itself (no copy); moved to another device at the first batch.
        self._host = (torch.from_numpy(np.asarray(split.images)), torch.from_numpy(split.labels),
                      torch.from_numpy(positions))
        self.images, self.labels, self.index = self._host
        self.device = torch.device("cpu")
        self.num_samples = len(positions)

    def to(self, device: torch.device) -> None:
        if device != self.device:
            self.images, self.labels, self.index = (t.to(device) for t in self._host)
            self.device = device

    def train_dataloader(self, sampler: torch.utils.data.Sampler, batch_size: int) -> DataLoader:
        # A generator of its own: DataLoader draws a base seed for its workers at every new iterator,
        # which would otherwise come from the global stream (the model's dropout and mixing).
        return DataLoader(_Positions(self.num_samples), batch_size=batch_size, sampler=sampler, drop_last=True,
                          num_workers=0, generator=torch.Generator().manual_seed(0))

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented ``(images, labels)`` batch for a batch of positions, on the positions' device."""
        self.to(positions.device)
        index = self.index[positions.to(self.index.device)]
        images = self.images[index].permute(0, 3, 1, 2).contiguous()
        return self.augment(images, self.generators), self.labels[index]

    def state_dict(self) -> dict[str, Any]:
        return self.generators.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generators.load_state_dict(state)


__all__ = [
    "BatchRandomErasing",
    "DeviceAugment",
    "DevicePipeline",
    "Generators",
    "PerSampleAutoAugment",
    "PerSampleLegacyRandAugment",
    "PerSampleRandAugment",
    "apply_grouped",
    "drawing_from",
]
