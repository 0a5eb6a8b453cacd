"""Shared LightningDataModule for image classification, and an in-memory uint8 image dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from vitlab.errors import ConfigError, DataError

from .samplers import RepeatedAugmentationSampler, derive_seed
from .transforms import build_eval_transform, build_train_transform, resolve_augment

Transform = Callable[[Any], Any]


class ArrayImageDataset(Dataset):
    """Images held in memory as a uint8 ``N x H x W x 3`` array, with integer labels.

    ``dataset[i]`` is ``(transform(image), label)`` where ``image`` is a fresh uint8 CHW tensor
    (a copy, so a transform can never write into the shared array) and ``label`` a Python int.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, transform: Transform | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be a uint8 N x H x W x 3 array, got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"expected {len(images)} labels, got shape {labels.shape}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = torch.tensor(self.images[index].transpose(2, 0, 1))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Transform | None) -> ArrayImageDataset:
        """A view over the same arrays (no copy) with another transform."""
        return ArrayImageDataset(self.images, self.labels, transform)


class TransformedView(Dataset):
    """Applies ``transform`` to the image of each ``(image, label)`` item of ``dataset``."""

    def __init__(self, dataset: Dataset, transform: Transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


def _with_transform(dataset: Dataset, transform: Transform) -> Dataset:
    # Not duck-typed: Hugging Face datasets also have a with_transform, for batches of dicts.
    if isinstance(dataset, ArrayImageDataset):
        return dataset.with_transform(transform)
    return TransformedView(dataset, transform)


def _check_int(value: Any, key: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")


def _check_channels(values: Sequence[float], key: str, positive: bool) -> tuple[float, float, float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 3:
        raise ConfigError(f"{key}: expected three numbers (R, G, B), got {values!r}")
    if positive and min(values) <= 0:
        raise ConfigError(f"{key}: every value must be > 0, got {list(values)}")
    return tuple(float(v) for v in values)


class ImageDataModule(lightning.LightningDataModule):
    """Train/val/test loaders over an image classification dataset.

    Subclasses implement :meth:`_load_split`, which returns the raw official train or test split
    (items ``(image, label)``, image a PIL image or uint8 CHW tensor, no transform applied).

    Validation is a held-out part of the official train split: ``val_size`` images (an int count,
    or a float fraction in (0, 1)) picked with a generator seeded by ``split_seed`` only, so the
    split is the same in every run whatever the global seed. ``val_size=0`` validates on the test
    split instead (the seeds' parity mode, which selects models on the test set).

    ``batch_size`` is per device; ``train.py`` sets it after construction.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        val_size: int | float = 5000,
        split_seed: int = 0,
        augment: Mapping[str, Any] | None = None,
        repeated_aug: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_int(num_classes, "data.num_classes")
        _check_int(img_size, "data.img_size")
        _check_int(batch_size, "recipe.batch_size")
        _check_int(num_workers, "hardware.num_workers", minimum=0)
        _check_int(repeated_aug, "recipe.repeated_aug")
        if isinstance(val_size, bool) or not (
            (isinstance(val_size, int) and val_size >= 0) or (isinstance(val_size, float) and 0 <= val_size < 1)
        ):
            raise ConfigError(
                f"data.val_size: expected an image count >= 0 or a fraction in (0, 1), got {val_size!r}; "
                "use 0 to validate on the test split"
            )
        self.num_classes = num_classes
        self.img_size = img_size
        self.mean = _check_channels(mean, "data.mean", positive=False)
        self.std = _check_channels(std, "data.std", positive=True)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.val_size = val_size
        self.split_seed = split_seed
        # Validate now so a bad recipe fails before any download.
        self.augment = resolve_augment(augment)
        self.repeated_aug = repeated_aug
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _load_split(self, train: bool) -> Dataset:
        """The official train (``train=True``) or test split, without any transform."""
        raise NotImplementedError

    def _num_val(self, num_train: int) -> int:
        count = round(self.val_size * num_train) if isinstance(self.val_size, float) else self.val_size
        if count >= num_train or (self.val_size > 0 and count == 0):
            raise ConfigError(
                f"data.val_size: {self.val_size!r} asks for {count} of the {num_train} training images for "
                "validation, which leaves no training or no validation images; choose a value in between, "
                "or 0 to validate on the test split"
            )
        return count

    def setup(self, stage: str | None = None) -> None:
        """Load both official splits once and build the train/val/test views; later calls do nothing."""
        if self.train_set is not None:
            return
        train_split, test_split = self._load_split(train=True), self._load_split(train=False)
        for name, split in (("train", train_split), ("test", test_split)):
            if len(split) == 0:
                raise DataError(f"{type(self).__name__}: the {name} split has no images; check the data.* paths")

        train_native = self._native_size(train_split)
        train_view = _with_transform(
            train_split, build_train_transform(self.augment, self.img_size, self.mean, self.std, train_native)
        )
        self.test_set = _with_transform(
            test_split, build_eval_transform(self.img_size, self.mean, self.std, self._native_size(test_split))
        )
        num_val = self._num_val(len(train_split))
        if num_val == 0:
            self.train_set, self.val_set = train_view, self.test_set
            return
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(self.split_seed))
        eval_view = _with_transform(
            train_split, build_eval_transform(self.img_size, self.mean, self.std, train_native)
        )
        self.val_set = Subset(eval_view, order[:num_val].sort().values.tolist())
        self.train_set = Subset(train_view, order[num_val:].sort().values.tolist())

    @staticmethod
    def _native_size(split: Dataset) -> tuple[int, int]:
        """(height, width) of the split's first image, which decides whether to resize."""
        image, _ = split[0]
        height, width = TF.get_size(image)
        return height, width

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        samples_per_epoch = len(self.train_set) * self.repeated_aug
        if self.batch_size > samples_per_epoch:
            raise ConfigError(
                f"recipe.batch_size: {self.batch_size} per device is larger than the {samples_per_epoch} "
                "training samples per epoch, so there would be no full batch; lower recipe.batch_size"
            )
        # Seeds the shuffle and the workers' base seed, so augmentations are reproducible too.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "train-order"))
        if self.repeated_aug > 1:
            sampler = RepeatedAugmentationSampler(len(self.train_set), repeats=self.repeated_aug, seed=self.seed)
            return self._loader(self.train_set, sampler=sampler, generator=generator, drop_last=True)
        return self._loader(self.train_set, shuffle=True, generator=generator, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.test_set, shuffle=False, drop_last=False)
