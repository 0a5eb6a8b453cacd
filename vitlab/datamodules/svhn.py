"""SVHN (cropped digits, format 2) read from the official ``*_32x32.mat`` files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from vitlab.errors import ConfigError, DataError

from .base import ImageDataModule
from .datasets import ArrayImageDataset

_SIDE = 32
_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


class SVHNDataModule(ImageDataModule):
    """SVHN from ``<data_dir>/{train,test,extra}_32x32.mat`` (the files torchvision downloads).

    The ``.mat`` files are read with :func:`scipy.io.loadmat` (keys ``X``: 32 x 32 x 3 x N uint8,
    ``y``: N x 1), not through torchvision's dataset class, which would md5-check them; torchvision
    is only used to download. Label 10 stands for the digit 0 and becomes 0, so labels are the
    digits 0-9. ``use_extra=True`` appends the 531,131 ``extra`` images to the train split.

    Validation: ``val_size`` held out of train; a fraction is truncated like the OutGrid seed's
    ``int(0.1 * N)`` (65,932 / 7,325 / 26,032 without extra).
    """

    display_name = "SVHN"
    dataset_class: type[torchvision.datasets.SVHN] = torchvision.datasets.SVHN

    def __init__(
        self,
        data_dir: str,
        download: bool = True,
        use_extra: bool = False,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        mean: Sequence[float] = (0.4377, 0.4438, 0.4728),
        std: Sequence[float] = (0.1980, 0.2010, 0.1970),
        val_size: int | float = 0.1,
        **kwargs: Any,
    ) -> None:
        if num_classes != 10:
            raise ConfigError(f"data.num_classes: SVHN has 10 classes, got {num_classes!r}; set data.num_classes=10")
        for key, value in (("data.download", download), ("data.use_extra", use_extra)):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false, got {value!r}")
        super().__init__(num_classes=num_classes, img_size=img_size, mean=mean, std=std, val_size=val_size, **kwargs)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.download = download
        self.use_extra = use_extra
        self.classes = [str(digit) for digit in range(10)]

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test", "extra") if self.use_extra else ("train", "test")

    def _missing_files(self) -> list[str]:
        return [_FILES[split] for split in self.splits if not (self.data_dir / _FILES[split]).is_file()]

    def _check_files(self) -> None:
        missing = self._missing_files()
        if missing:
            raise DataError(
                f"data.data_dir: {self.data_dir} lacks {', '.join(missing)} (SVHN format 2, cropped digits); pass "
                "data.download=true or point data.data_dir at the folder that holds the .mat files"
            )

    def prepare_data(self) -> None:
        """Download the missing ``.mat`` files (torchvision checks their md5)."""
        if not self._missing_files():
            return
        if not self.download:
            self._check_files()
        for split in self.splits:
            if (self.data_dir / _FILES[split]).is_file():
                continue
            try:
                self.dataset_class(root=str(self.data_dir), split=split, download=True)
            except (OSError, RuntimeError) as err:
                message = str(err).replace("\n", " ")
                raise DataError(
                    f"data.data_dir: could not download SVHN {_FILES[split]} into {self.data_dir} ({message}); "
                    "fetch it elsewhere and put it there"
                ) from err

    def _num_val(self, num_train: int) -> int:
        if isinstance(self.val_size, float) and self.val_size > 0:
            count = int(self.val_size * num_train)
            if 0 < count < num_train:
                return count
        return super()._num_val(num_train)

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        path = self.data_dir / _FILES[split]
        try:
            # loadmat parses the MAT format into numpy arrays (cells and MATLAB objects become object
            # arrays, refused below): it unpickles nothing and runs no code the file names.
            content = loadmat(str(path), variable_names=("X", "y"))
        except Exception as err:  # scipy raises many kinds (MatReadError, IndexError, ...) on a damaged file
            message = str(err).replace("\n", " ")
            raise DataError(f"data.data_dir: {path} is not a readable .mat file ({message}); re-download it") from err
        if "X" not in content or "y" not in content:
            raise DataError(f"data.data_dir: {path} lacks the variables X and y of an SVHN file; re-download it")
        images, labels = np.asarray(content["X"]), np.asarray(content["y"]).reshape(-1)
        if images.dtype != np.uint8 or labels.dtype.kind not in "uif":
            raise DataError(
                f"data.data_dir: {path} holds X of type {images.dtype} and y of type {labels.dtype}, expected uint8 "
                "pixels and numeric labels (an official SVHN file); delete it and run with data.download=true to "
                "fetch it again"
            )
        if images.ndim != 4 or images.shape[:3] != (_SIDE, _SIDE, 3) or images.shape[3] != len(labels):
            raise DataError(
                f"data.data_dir: {path} holds X of shape {images.shape} and {len(labels)} labels, expected "
                f"{_SIDE} x {_SIDE} x 3 x N and N labels; re-download it"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 10):
            raise DataError(f"data.data_dir: {path} has labels outside 0..10; is it really SVHN?")
        labels = labels.astype(np.int64) % 10  # 10 is the digit 0
        return images.astype(np.uint8, copy=False).transpose(3, 0, 1, 2), labels

    def _load_split(self, train: bool) -> ArrayImageDataset:
        self._check_files()
        parts = [self._read(split) for split in (("train", "extra") if self.use_extra else ("train",))] if train else [
            self._read("test")
        ]
        images = np.ascontiguousarray(np.concatenate([images for images, _ in parts]))
        labels = np.concatenate([labels for _, labels in parts])
        return ArrayImageDataset(images, labels)
