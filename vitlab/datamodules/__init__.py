"""LightningDataModules, transforms and samplers for image classification."""

from .base import ImageDataModule
from .datasets import (
    ArrayImageDataset,
    ImageFileDataset,
    ImageListDataset,
    TransformedView,
    decode_all,
    first_per_class,
    split_targets,
)
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .folder import ImageFolderDataModule
from .images import ImageDecodeError, load_image
from .imagenet100 import CMC_CLASS_LIST, ImageNet100DataModule
from .samplers import RepeatedAugmentationSampler, derive_seed
from .svhn import SVHNDataModule
from .synthetic import SyntheticDataModule
from .tinyimagenet import CORRUPTIONS, TinyImageNetCDataModule, TinyImageNetDataModule
from .transforms import (
    AUGMENT_DEFAULTS,
    build_eval_transform,
    build_train_transform,
    resolve_augment,
)

__all__ = [
    "AUGMENT_DEFAULTS",
    "ArrayImageDataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CMC_CLASS_LIST",
    "CORRUPTIONS",
    "ImageDataModule",
    "ImageDecodeError",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageListDataset",
    "ImageNet100DataModule",
    "RepeatedAugmentationSampler",
    "SVHNDataModule",
    "SyntheticDataModule",
    "TinyImageNetCDataModule",
    "TinyImageNetDataModule",
    "TransformedView",
    "build_eval_transform",
    "build_train_transform",
    "decode_all",
    "derive_seed",
    "first_per_class",
    "load_image",
    "resolve_augment",
    "split_targets",
]
