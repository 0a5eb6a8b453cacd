"""Image folders in the ``<root>/<split>/<class>/<image>`` layout of torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import ImageFolder

from vitlab.errors import ConfigError, DataError

from .base import ImageDataModule

_LAYOUT_HINT = "an ImageFolder root needs one sub-folder per class, e.g. <root>/train/cat/001.jpg"


class ImageFolderDataModule(ImageDataModule):
    """Train split from ``<root>/<train_dir>``, test split from ``<root>/<test_dir>``.

    Labels are the class folder names in alphabetical order; both splits must have the same
    class folders. Setup lists the files and checks each header (``images.check_image_files``); images
    are decoded (PIL, RGB) when loaded.
    """

    def __init__(self, root: str, train_dir: str = "train", test_dir: str = "test", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser().resolve()
        self.train_dir = train_dir
        self.test_dir = test_dir
        self._classes: list[str] | None = None

    def _split_folder(self, train: bool) -> Path:
        if not self.root.is_dir():
            raise DataError(
                f"data.root: {self.root} is not a folder; point data.root at a folder holding "
                f"{self.train_dir}/ and {self.test_dir}/ ({_LAYOUT_HINT})"
            )
        key, name = ("data.train_dir", self.train_dir) if train else ("data.test_dir", self.test_dir)
        folder = self.root / name
        if not folder.is_dir():
            raise DataError(
                f"data.root: no {name}/ folder in {self.root}; add it or set {key} ({_LAYOUT_HINT})"
            )
        if not any(entry.is_dir() for entry in folder.iterdir()):
            raise DataError(f"data.root: {folder} has no class sub-folders; {_LAYOUT_HINT}")
        return folder

    def _load_split(self, train: bool) -> ImageFolder:
        folder = self._split_folder(train)
        # allow_empty so that empty classes are reported here, by name, in one line.
        dataset = ImageFolder(str(folder), allow_empty=True)
        counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
        empty = [name for name, count in zip(dataset.classes, counts, strict=True) if count == 0]
        if empty:
            raise DataError(
                f"data.root: class folder(s) {', '.join(empty)} in {folder} hold no images; add images "
                "or remove the folder(s)"
            )
        if train:
            if len(dataset.classes) != self.num_classes:
                raise ConfigError(
                    f"data.num_classes: is {self.num_classes} but {folder} has {len(dataset.classes)} class "
                    f"folders; set data.num_classes={len(dataset.classes)}"
                )
            self._classes = dataset.classes
        elif dataset.classes != self.classes:
            only_train = sorted(set(self.classes) - set(dataset.classes))
            only_test = sorted(set(dataset.classes) - set(self.classes))
            raise DataError(
                f"data.root: class folders of {folder} differ from {self.root / self.train_dir} "
                f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'}); "
                "give both splits the same class folders"
            )
        return dataset

    @property
    def classes(self) -> list[str]:
        """Class folder names of the train split, in label order."""
        if self._classes is None:
            self._load_split(train=True)
        return self._classes
