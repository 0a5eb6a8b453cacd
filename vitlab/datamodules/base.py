"""The LightningDataModule every image classification dataset extends: :class:`ImageDataModule`.

Options every DataModule shares (constructor keywords of :class:`ImageDataModule`, the data schema's
keys in ``vitlab/config.py``): ``num_workers`` and ``pin_memory`` (the hardware profile's,
``hardware.*``; pinned memory only when CUDA is available), ``persistent_workers``, ``val_size`` /
``split_seed`` (a deterministic held-out validation part of the train split), ``subset`` (first N
images per class of the train split) and ``cache`` (decode every image once in ``setup`` and keep the
uint8 pixels in memory; for small datasets). Image files are read by ``images.py``, the datasets and
split helpers are in ``datasets.py`` and the setting checks in ``settings.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import default_loader
from torchvision.transforms.v2 import functional as TF

from vitlab.checkpoint import gather_ranks
from vitlab.config import DataConfig, HardwareConfig
from vitlab.errors import ConfigError, DataError

from .datasets import (
    ArrayImageDataset,
    decode_all,
    first_per_class,
    image_paths,
    known_labels,
    split_targets,
    with_transform,
)
from .images import check_image_files, load_image
from .samplers import FixedOrderSampler, RepeatedAugmentationSampler, SeededItems, class_interleaved_order, derive_seed
from .settings import check_channels, check_device_augment, check_settings
from .transforms import _INTERPOLATIONS, build_eval_transform, build_train_transform, resolve_augment
from .workers import WorkerInit, main_process_signals

Transform = Callable[[Any], Any]

log = logging.getLogger(__name__)


class ImageDataModule(lightning.LightningDataModule):
    """Train/val/test loaders over an image classification dataset.

    Subclasses implement :meth:`_load_split`, which returns the raw official train or test split
    (items ``(image, label)``, image a PIL image or uint8 CHW tensor, no transform applied).

    Validation is a held-out part of the official train split: ``val_size`` images (an int count,
    or a float fraction in (0, 1)) picked with a generator seeded by ``split_seed`` only, so the
    split is the same in every run whatever the global seed. ``val_size=0`` validates on the test
    split instead (the seeds' parity mode, which selects models on the test set).

    ``batch_size`` is per device; ``train.py`` sets it after construction.

    The val and test loaders go through their split in one fixed class-interleaved order (seeded by
    ``split_seed``; the same every epoch and run), so a partial evaluation (``limit_val_batches``,
    ``limit_test_batches``) scores a class-balanced sample even when the files are stored class by
    class.

    ``subset=N`` keeps the first N images of each class of the official train split (in the
    split's own order, before the validation split is drawn); the test split stays whole.
    ``pipeline="device"`` keeps the training split as uint8 on the training device and augments each
    batch there (``datamodules/device_pipeline.py``; image files are decoded once into a memory-mapped
    cache under ``cache_dir``, ``datamodules/tensor_cache.py``); validation and testing read the same
    decoded arrays through the usual loaders.
    ``cache=True`` decodes both splits once in :meth:`setup` (using ``num_workers`` processes) and
    keeps the uint8 pixels in memory, so epochs skip JPEG decoding: for small datasets only
    (TinyImageNet-200's train split takes 1.2 GB). ``pin_memory`` takes effect only when CUDA is
    available. :meth:`setup` opens every image file's header (and end marker) once, so an empty,
    unreadable, non-image or cut-short file is refused before training in one line naming it
    (:func:`~vitlab.datamodules.images.check_image_files`); an image that still cannot be decoded raises
    :class:`ImageDecodeError` (a ``DataError``) naming the file, also from inside loader workers.
    """

    #: Interpolation of the resize to ``img_size`` (when the images are not already that size);
    #: the ``resize_interpolation`` argument (``data.resize_interpolation``) overrides it.
    resize_interpolation = "bicubic"

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 128,
        num_workers: int = HardwareConfig.num_workers,
        pin_memory: bool = HardwareConfig.pin_memory,
        persistent_workers: bool = DataConfig.persistent_workers,
        val_size: int | float = DataConfig.val_size,
        split_seed: int = DataConfig.split_seed,
        augment: Mapping[str, Any] | None = None,
        repeated_aug: int = 1,
        seed: int = 0,
        cache: bool = DataConfig.cache,
        subset: int | None = DataConfig.subset,
        resize_interpolation: str | None = DataConfig.resize_interpolation,
        pipeline: str = DataConfig.pipeline,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_settings(num_classes, img_size, batch_size, num_workers, repeated_aug, pin_memory, persistent_workers,
                       cache, subset, val_size, pipeline)
        self.num_classes = num_classes
        self.img_size = img_size
        self.mean = check_channels(mean, "data.mean", positive=False)
        self.std = check_channels(std, "data.std", positive=True)
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
        self.cache = cache
        self.subset = subset
        self.pipeline = pipeline
        if pipeline == "device":
            check_device_augment(self.augment)
        # Like paths.data_dir's default, for use without the configs.
        default_cache = os.path.join(os.environ.get("VITLAB_DATA_DIR", "data"), "cache")
        self.cache_dir = cache_dir if cache_dir is not None else default_cache
        self._device_pipeline = None
        self._device_pipeline_state: dict[str, Any] | None = None
        if resize_interpolation is not None:  # else the dataset's class default
            if resize_interpolation not in _INTERPOLATIONS:
                raise ConfigError(
                    f"data.resize_interpolation: unknown mode {resize_interpolation!r}; use one of {', '.join(_INTERPOLATIONS)}"
                )
            self.resize_interpolation = resize_interpolation
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None  # the training images through the eval transform
        self._train_sampler: RepeatedAugmentationSampler | None = None
        self._resume_state: tuple[int, int] | None = None  # (epoch, samples done) from a checkpoint

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

    def _prepare_split(self, split: Dataset, name: str, subset: int | None) -> Dataset:
        """Checked image decoding, then the first ``subset`` images per class, the cheap check of their
        files (:func:`~vitlab.datamodules.images.check_image_files`), then the optional cache."""
        if len(split) == 0:
            raise DataError(f"{type(self).__name__}: the {name} split has no images; check the data.* paths")
        if isinstance(split, DatasetFolder) and split.loader is default_loader:
            split.loader = load_image  # a corrupt file is then reported by path, as a DataError
        if subset is not None:
            keep = first_per_class(split_targets(split), subset)
            if len(keep) < len(split):
                if isinstance(split, ArrayImageDataset):
                    split = ArrayImageDataset(split.images[keep], split.labels[keep])
                else:
                    split = Subset(split, keep)
        paths = image_paths(split)
        if paths is not None:  # a corrupt file is reported now, not when a loader reaches it
            check_image_files(paths, cache_dir=self.cache_dir, stamp=f"{type(self).__name__}-{name}")
        if self.pipeline == "device":
            from .tensor_cache import cached_split

            return cached_split(split, cache_dir=self.cache_dir, owner=type(self).__name__, name=name,
                                img_size=self.img_size, interpolation=self.resize_interpolation,
                                num_workers=self.num_workers)
        if self.cache:
            split = decode_all(split, self.num_workers)
            nbytes = split.images.nbytes if isinstance(split, ArrayImageDataset) else sum(
                image.numel() for image in split.images
            )
            log.info("data.cache: %s split of %s decoded into memory (%d images, %.1f MB)", name,
                     type(self).__name__, len(split), nbytes / 2**20)
        return split

    def _train_transform(self, native_size: Any) -> Transform:
        return build_train_transform(
            self.augment, self.img_size, self.mean, self.std, native_size, interpolation=self.resize_interpolation
        )

    def _eval_transform(self, native_size: Any) -> Transform:
        return self.eval_transform(self.img_size, self.mean, self.std, native_size, self.resize_interpolation)

    @classmethod
    def eval_transform(
        cls,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        native_size: tuple[int, int] | None = None,
        resize_interpolation: str | None = None,
    ) -> Transform:
        """The one evaluation transform of this dataset (its val and test splits, ``vitlab-predict``,
        :func:`vitlab.load_run`): resize to ``img_size`` with the dataset's interpolation unless the
        images are ``native_size`` already (``None``: images of any size, such as files from
        elsewhere), then scale and normalise. A classmethod, so that a run's transform needs only its
        data config, not the dataset's files."""
        interpolation = resize_interpolation or cls.resize_interpolation
        return build_eval_transform(img_size, mean, std, native_size, interpolation=interpolation)

    def setup(self, stage: str | None = None) -> None:
        """Load both official splits once and build the train/val/test views; later calls do nothing."""
        if self.train_set is not None:
            return
        train_split = self._prepare_split(self._load_split(train=True), "train", self.subset)
        test_split = self._prepare_split(self._load_split(train=False), "test", None)

        train_native = self._native_size(train_split)
        train_view = with_transform(train_split, self._train_transform(train_native))
        self.test_set = with_transform(test_split, self._eval_transform(self._native_size(test_split)))
        num_val = self._num_val(len(train_split))
        eval_view = with_transform(train_split, self._eval_transform(train_native))
        if num_val == 0:
            self.train_set, self.val_set, self.train_eval_set = train_view, self.test_set, eval_view
            return
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(self.split_seed))
        self.val_set = Subset(eval_view, order[:num_val].sort().values.tolist())
        train_indices = order[num_val:].sort().values.tolist()
        self.train_set = Subset(train_view, train_indices)
        self.train_eval_set = Subset(eval_view, train_indices)

    @staticmethod
    def _native_size(split: Dataset) -> tuple[int, int] | None:
        """(height, width) of the split's first image, which decides whether to resize; a dataset
        whose images differ in size overrides this to return None (always resize)."""
        image, _ = split[0]
        height, width = TF.get_size(image)
        return height, width

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        # A loader draws its workers' base seed when first iterated; from its own generator that draw
        # leaves the global RNG alone, so when a loader is first iterated (a resumed run skips the
        # sanity check) cannot shift the training streams.
        kwargs.setdefault("generator", torch.Generator().manual_seed(derive_seed(self.seed, "eval-loader")))
        if self.num_workers > 0:
            # The workers leave the run's preemption signals (SIGTERM, SIGUSR1) to the main process,
            # which saves at the next step boundary; a loader's own worker_init_fn runs after.
            kwargs["worker_init_fn"] = WorkerInit(main_process_signals(self.trainer), kwargs.get("worker_init_fn"),
                                                  rank=getattr(self.trainer, "global_rank", 0))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
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
        # The order depends only on (seed, epoch) and each sample's augmentation only on (seed, epoch,
        # position), so a resumed run sees the batches, and the augmented images, an uninterrupted one
        # would, whatever the number of workers; each rank of a multi-process run takes its share.
        # The device pipeline draws its augmentations from its own generators (saved in state_dict), so
        # its sampler yields plain indices.
        with_seeds = self.pipeline != "device"
        sampler = RepeatedAugmentationSampler(
            len(self.train_set), repeats=self.repeated_aug, seed=self.seed, with_seeds=with_seeds
        )
        if self._resume_state is not None:
            # Set the epoch now: with workers the loader starts fetching as soon as it is iterated,
            # which on a resume happens before Lightning sets the sampler's epoch.
            epoch, done = self._resume_state
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, done)
            self._resume_state = None
        self._train_sampler = sampler
        if self.pipeline == "device":
            return self._device_train_dataloader(sampler, sampler.rank)
        # The loader draws its workers' base seed from this generator instead of the global RNG, so
        # building a loader leaves the training RNG streams alone.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "train-loader", sampler.rank))
        return self._loader(SeededItems(self.train_set), sampler=sampler, generator=generator, drop_last=True)

    def _device_train_dataloader(self, sampler: RepeatedAugmentationSampler, rank: int) -> DataLoader:
        from .device_pipeline import DeviceAugment, DevicePipeline

        split = self.train_set
        while isinstance(split, Subset):
            split = split.dataset
        native_size = tuple(split.images.shape[1:3])  # the stored size, not that of a transformed item
        augment = DeviceAugment(self.augment, self.img_size, self.mean, self.std, native_size,
                                interpolation=self.resize_interpolation)
        self._device_pipeline = DevicePipeline(self.train_set, augment, seed=self.seed, rank=rank)
        if self._device_pipeline_state is not None:
            self._device_pipeline.load_state_dict(self._device_pipeline_state)
            self._device_pipeline_state = None
        return self._device_pipeline.train_dataloader(sampler, self.batch_size)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # data.pipeline=device: a training batch arrives as the positions of its images (a bare tensor;
        # evaluation batches are (images, labels) pairs) and is gathered and augmented here, on the device.
        if self._device_pipeline is not None and isinstance(batch, torch.Tensor):
            return self._device_pipeline(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the training stream stands: the epoch and how many of its samples (per rank) have
        been trained on, for a resume in the middle of an epoch; with data.pipeline=device also each
        rank's augmentation generators."""
        state: dict[str, Any] = {}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            epoch_done = batches >= trainer.num_training_batches
            state.update(epoch=trainer.current_epoch, samples_done=batches * self.batch_size, epoch_done=epoch_done)
        if self._device_pipeline is not None:
            state["device_pipeline"] = gather_ranks(self._device_pipeline.state_dict())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        device_states = state_dict.get("device_pipeline") or []
        self._device_pipeline_state = device_states[rank] if rank < len(device_states) else None
        if "epoch" in state_dict:
            epoch, done = int(state_dict["epoch"]), int(state_dict["samples_done"])
            self._resume_state = (epoch + 1, 0) if state_dict.get("epoch_done") else (epoch, done)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Val/test batches in a fixed class-interleaved order (seeded by ``split_seed`` only, the
        same in every epoch and run), so a ``limit_val_batches``/``limit_test_batches`` prefix is a
        class-balanced sample, not the first classes of a split stored class by class."""
        seed = derive_seed(self.split_seed, "eval-order")
        order = class_interleaved_order(known_labels(dataset), len(dataset), seed)
        return self._loader(dataset, sampler=FixedOrderSampler(order), drop_last=False)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._eval_loader(self.test_set)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images (without the validation part) through the eval transform, in the fixed
        class-interleaved order: what a network's frozen features are fitted on (a linear probe)."""
        self._require_setup()
        return self._eval_loader(self.train_eval_set)
