"""CIFAR-10 and CIFAR-100 read from the official python-pickle batches.

The batches are pickles, and a pickle can name any Python callable to run while it loads. They are
read with :class:`BatchUnpickler`, which admits only what the official batches hold (dicts, lists,
bytes, ints and uint8/integer numpy arrays) and refuses any other global before anything is called.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from vitlab.errors import ConfigError, DataError

from .base import ImageDataModule
from .datasets import ArrayImageDataset

_CIFAR_SIDE = 32


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asks for something a CIFAR batch never holds; ``what`` names it."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _numpy_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the dtypes a batch holds (unsigned and signed integers) only."""
    dtype = np.dtype(*args)
    if dtype.kind not in "ui" or dtype.fields is not None or dtype.subdtype is not None:
        raise RefusedGlobal(f"a numpy array of dtype {dtype}")
    return dtype


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as a protocol-2 pickle written by Python 3 uses it: a str to latin-1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer

    admitted: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numpy_dtype,
                                            ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):  # numpy 1 writes numpy.core, numpy 2 numpy._core
        admitted[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        admitted[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return admitted


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of a pickled numpy integer array: the official
    batches (protocol 2, Python 2) name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; a batch re-pickled by Python 3 also ``_codecs.encode`` (protocol 2) or
    ``numpy._core.numeric._frombuffer`` (protocol 5), and numpy 2 spells ``numpy.core`` as
    ``numpy._core``. Any other global raises :class:`RefusedGlobal` without importing its module."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal(f"the persistent object {str(pid)[:40]!r}")


_ADMITTED: dict[tuple[str, str], Any] = {}


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 from ``<data_dir>/cifar-10-batches-py`` (the official python release).

    The batches are read directly rather than through torchvision's dataset class, which would
    md5-check every file; torchvision is only used to download and verify the real archive.
    """

    display_name = "CIFAR-10"
    folder_name = "cifar-10-batches-py"
    train_files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: tuple[str, ...] = ("test_batch",)
    meta_file = "batches.meta"
    label_key = b"labels"
    names_key = b"label_names"
    dataset_class: type[torchvision.datasets.CIFAR10] = torchvision.datasets.CIFAR10
    expected_classes = 10

    def __init__(
        self,
        data_dir: str,
        download: bool = True,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2023, 0.1994, 0.2010),
        **kwargs: Any,
    ) -> None:
        if num_classes != self.expected_classes:
            raise ConfigError(
                f"data.num_classes: {self.display_name} has {self.expected_classes} classes, got {num_classes!r}; "
                f"set data.num_classes={self.expected_classes}"
            )
        super().__init__(num_classes=num_classes, img_size=img_size, mean=mean, std=std, **kwargs)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.download = download
        self._classes: list[str] | None = None

    @property
    def folder(self) -> Path:
        return self.data_dir / self.folder_name

    def _missing_files(self) -> list[str]:
        wanted = (*self.train_files, *self.test_files, self.meta_file)
        return [name for name in wanted if not (self.folder / name).is_file()]

    def _check_files(self) -> None:
        missing = self._missing_files()
        if not missing:
            return
        if len(missing) == len(self.train_files) + len(self.test_files) + 1:
            raise DataError(
                f"data.data_dir: no {self.display_name} batches in {self.folder}; pass data.download=true or "
                f"point data.data_dir at the folder that holds {self.folder_name}"
            )
        raise DataError(
            f"data.data_dir: {self.folder} is incomplete (missing {', '.join(missing)}); delete it and pass "
            "data.download=true, or restore the missing files"
        )

    def prepare_data(self) -> None:
        """Download and verify the official archive unless the batch files are already there."""
        if not self._missing_files():
            return
        if not self.download:
            self._check_files()
        try:
            self.dataset_class(root=str(self.data_dir), train=True, download=True)
        except (OSError, RuntimeError) as err:
            message = str(err).replace("\n", " ")
            raise DataError(
                f"data.data_dir: could not download {self.display_name} into {self.data_dir} ({message}); "
                f"fetch it elsewhere and point data.data_dir at the folder that holds {self.folder_name}"
            ) from err

    def _read(self, name: str) -> dict[bytes, Any]:
        path = self.folder / name
        if not _ADMITTED:
            _ADMITTED.update(_numpy_globals())
        try:
            with path.open("rb") as f:
                content = BatchUnpickler(f, encoding="bytes").load()
        except RefusedGlobal as err:
            raise DataError(
                f"data.data_dir: {path} asks to load {err.what}, which a {self.display_name} batch never holds; the "
                f"file is not an official {self.display_name} batch: delete it and run with data.download=true to "
                "fetch it again"
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, MemoryError) as err:
            raise DataError(
                f"data.data_dir: {path} is not a readable {self.display_name} pickle ({err}); re-download it"
            ) from err
        if not isinstance(content, dict):
            raise DataError(f"data.data_dir: {path} does not hold a {self.display_name} dict; re-download it")
        return content

    def _read_batch(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        batch = self._read(name)
        path = self.folder / name
        if b"data" not in batch or self.label_key not in batch:
            raise DataError(
                f"data.data_dir: {path} lacks the keys b'data' and {self.label_key!r} of a {self.display_name} "
                "batch; re-download it"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[self.label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * _CIFAR_SIDE**2 or len(data) != len(labels):
            raise DataError(
                f"data.data_dir: {path} holds data of shape {data.shape} and {len(labels)} labels, expected "
                f"N x {3 * _CIFAR_SIDE**2} and N labels; re-download it"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.expected_classes):
            raise DataError(
                f"data.data_dir: {path} has labels outside 0..{self.expected_classes - 1}; is it really "
                f"{self.display_name}?"
            )
        return data, labels

    def _load_split(self, train: bool) -> ArrayImageDataset:
        self._check_files()
        batches = [self._read_batch(name) for name in (self.train_files if train else self.test_files)]
        data = np.concatenate([data for data, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        # Each row is the R, G and B planes of a 32 x 32 image in turn (row-major).
        images = data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
        return ArrayImageDataset(images, labels)

    @property
    def classes(self) -> list[str]:
        """Label names in label order, from the meta file."""
        if self._classes is None:
            self._check_files()
            meta = self._read(self.meta_file)
            if self.names_key not in meta:
                raise DataError(
                    f"data.data_dir: {self.folder / self.meta_file} lacks {self.names_key!r}; re-download it"
                )
            self._classes = [name.decode("utf-8") for name in meta[self.names_key]]
        return self._classes


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (the 100 fine labels) from ``<data_dir>/cifar-100-python``."""

    display_name = "CIFAR-100"
    folder_name = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = b"fine_labels"
    names_key = b"fine_label_names"
    dataset_class = torchvision.datasets.CIFAR100
    expected_classes = 100

    def __init__(
        self,
        data_dir: str,
        download: bool = True,
        *,
        num_classes: int = 100,
        mean: Sequence[float] = (0.5071, 0.4867, 0.4408),
        std: Sequence[float] = (0.2675, 0.2565, 0.2761),
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, download, num_classes=num_classes, mean=mean, std=std, **kwargs)
