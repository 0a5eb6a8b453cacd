"""LightningDataModules, transforms and samplers for image classification."""

from .base import ArrayImageDataset, ImageDataModule, TransformedView
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .folder import ImageFolderDataModule
from .samplers import RepeatedAugmentationSampler, derive_seed
from .synthetic import SyntheticDataModule
from .transforms import AUGMENT_DEFAULTS, build_eval_transform, build_train_transform, resolve_augment

__all__ = [
    "AUGMENT_DEFAULTS",
    "ArrayImageDataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "RepeatedAugmentationSampler",
    "SyntheticDataModule",
    "TransformedView",
    "build_eval_transform",
    "build_train_transform",
    "derive_seed",
    "resolve_augment",
]
