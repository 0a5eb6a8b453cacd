"""Image classification datasets and what reads them as a whole.

The datasets: :class:`ImageFileDataset` (image files, decoded when loaded), :class:`ArrayImageDataset`
(uint8 pixels in one array) and :class:`ImageListDataset` (uint8 pixels of different sizes), each
item ``(transform(image), label)``, and :class:`TransformedView` (another transform over a dataset's
items). The helpers read a split's labels without decoding (:func:`split_targets`,
:func:`known_labels`), keep the first images of each class (:func:`first_per_class`) and decode a
split into memory once (:func:`decode_all`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import DatasetFolder

from .images import load_image

Transform = Callable[[Any], Any]


class ImageFileDataset(Dataset):
    """Images listed as ``(path, label)`` pairs, decoded when loaded (PIL, RGB).

    ``dataset[i]`` is ``(transform(image), label)``; ``targets`` lists the labels without decoding
    anything; ``classes`` names the labels in label order. A file that cannot be decoded raises
    :class:`ImageDecodeError` naming it.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        classes: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes) if classes is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class ImageListDataset(Dataset):
    """Decoded images of different sizes held in memory (uint8 CHW tensors) with integer labels."""

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[int], transform: Transform | None = None):
        self.images = list(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index].clone()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


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


def with_transform(dataset: Dataset, transform: Transform) -> Dataset:
    """``dataset`` with ``transform`` applied to its images: a view over the same arrays where it can be."""
    # Not duck-typed: Hugging Face datasets also have a with_transform, for batches of dicts.
    if isinstance(dataset, ArrayImageDataset):
        return dataset.with_transform(transform)
    return TransformedView(dataset, transform)


def split_targets(split: Dataset) -> np.ndarray:
    """The labels of every item of ``split``, in order; read without decoding where the dataset allows."""
    if isinstance(split, ArrayImageDataset | ImageListDataset):
        return split.labels
    if isinstance(split, Subset):
        return split_targets(split.dataset)[np.asarray(split.indices, dtype=np.int64)]
    targets = getattr(split, "targets", None)
    if targets is not None:
        return np.asarray(targets, dtype=np.int64)
    return np.asarray([split[i][1] for i in range(len(split))], dtype=np.int64)


def image_paths(split: Dataset) -> list[str] | None:
    """The image file of every item of ``split``, in order, for a split read from image files
    (:class:`ImageFileDataset`, torchvision's ``DatasetFolder``/``ImageFolder``, a ``Subset`` of one);
    None for any other split."""
    if isinstance(split, Subset):
        inner = image_paths(split.dataset)
        return None if inner is None else [inner[i] for i in split.indices]
    if isinstance(split, TransformedView):
        return image_paths(split.dataset)
    if isinstance(split, ImageFileDataset | DatasetFolder):
        return [str(path) for path, _ in split.samples]
    return None


def known_labels(split: Dataset) -> np.ndarray | None:
    """The labels of ``split`` where they can be read without decoding an image, else None."""
    if isinstance(split, ArrayImageDataset | ImageListDataset):
        return split.labels
    if isinstance(split, Subset):
        labels = known_labels(split.dataset)
        return None if labels is None else labels[np.asarray(split.indices, dtype=np.int64)]
    if isinstance(split, TransformedView):
        return known_labels(split.dataset)
    for name in ("targets", "labels"):
        labels = getattr(split, name, None)
        if labels is not None and len(labels) == len(split):
            return np.asarray(labels, dtype=np.int64)
    return None


def first_per_class(labels: Sequence[int] | np.ndarray, count: int) -> list[int]:
    """Indices of the first ``count`` items of each label, in dataset order."""
    seen: dict[int, int] = {}
    keep = []
    for index, label in enumerate(np.asarray(labels).tolist()):
        if seen.get(label, 0) < count:
            seen[label] = seen.get(label, 0) + 1
            keep.append(index)
    return keep


class ArrayItems(Dataset):
    """``(uint8 H x W x 3 array, label)`` items of a raw split, for decoding in loader workers."""

    def __init__(self, split: Dataset):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.split[index]
        if isinstance(image, Image.Image):
            array = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        else:
            array = torch.as_tensor(image).permute(1, 2, 0).numpy()
        return array, int(label)


def collate_as_list(items: list[Any]) -> list[Any]:
    """A loader's ``collate_fn`` that keeps a batch as the list of its items."""
    return items


def decode_all(split: Dataset, num_workers: int = 0) -> ArrayImageDataset | ImageListDataset:
    """Decode every image of ``split`` once (in ``num_workers`` processes) and keep the uint8 pixels:
    an :class:`ArrayImageDataset` when all images have one size, else an :class:`ImageListDataset`."""
    if isinstance(split, ArrayImageDataset | ImageListDataset):
        return split
    # Lists of numpy arrays travel through the worker pipes; tensors would each hold a shared-memory
    # file descriptor for as long as the cache keeps them.
    loader = DataLoader(ArrayItems(split), batch_size=64, shuffle=False, num_workers=num_workers, collate_fn=collate_as_list)
    arrays, labels = [], []
    for items in loader:
        for array, label in items:
            arrays.append(array)
            labels.append(label)
    if len({array.shape for array in arrays}) == 1:
        return ArrayImageDataset(np.stack(arrays), labels)
    return ImageListDataset([torch.from_numpy(array.transpose(2, 0, 1).copy()) for array in arrays], labels)
