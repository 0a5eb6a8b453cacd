"""A split decoded once into a memory-mapped uint8 array on disk, for the device data pipeline.

``data.pipeline=device`` reads every training image from one ``N x H x W x 3`` uint8 array instead of
decoding files in loader workers. For splits read from image files (image folders, TinyImageNet) the
array is built once and kept under ``data.cache_dir`` (``${paths.data_dir}/cache`` in the configs)::

    <cache_dir>/<DataModule>-<split>-<name hash>.npy          the pixels (numpy .npy, memory-mapped)
    <cache_dir>/<DataModule>-<split>-<name hash>.labels.npy   int64 labels
    <cache_dir>/<DataModule>-<split>-<name hash>.json         what it was built from

The name hash covers the list of files, their labels and the resize settings, so another subset or
image size gets its own cache. The JSON records a second hash that also covers every file's size and
modification time: when a file changed since the cache was built the cache is *stale*, and when the
files are unreadable or disagree with the JSON it is *corrupt*; either way it is rebuilt, with one log
line saying why. Files are written under temporary names and renamed into place, the JSON last, so a
build that is killed half-way leaves no cache that looks complete.

Splits that already are uint8 arrays in memory (CIFAR's python batches, SVHN's .mat files, the
synthetic set) have nothing to decode and are used as they are, without a file.

Images of one size are stored as they are (a resize to ``img_size`` then happens per batch on the
device); when the sizes differ, every image is resized to ``img_size x img_size`` while the cache is
built, as the workers pipeline does first for such folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import DatasetFolder
from torchvision.transforms.v2 import functional as TF

from vitlab.errors import DataError

from .datasets import ArrayImageDataset, ArrayItems, ImageFileDataset, collate_as_list
from .transforms import _interpolation

log = logging.getLogger(__name__)

#: Bumped when the layout of the cache files changes, so older caches count as stale.
CACHE_FORMAT = 1


def _file_samples(split: Dataset) -> list[tuple[str, int]] | None:
    """``(path, label)`` of every item of a split read from image files, in order; None otherwise."""
    if isinstance(split, Subset):
        inner = _file_samples(split.dataset)
        return None if inner is None else [inner[i] for i in split.indices]
    if isinstance(split, DatasetFolder | ImageFileDataset):
        return [(str(path), int(label)) for path, label in split.samples]
    return None


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def _resize_settings(img_size: int, interpolation: str) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "img_size": img_size, "interpolation": interpolation}


def cache_paths(cache_dir: Path, stem: str) -> dict[str, Path]:
    return {"images": cache_dir / f"{stem}.npy", "labels": cache_dir / f"{stem}.labels.npy",
            "meta": cache_dir / f"{stem}.json"}


def _stat_key(samples: list[tuple[str, int]], settings: dict[str, Any]) -> str:
    stats = []
    for path, label in samples:
        try:
            info = os.stat(path)
        except OSError as err:
            raise DataError(f"{path}: cannot read the image file ({err.strerror}); restore it or remove it") from err
        stats.append((path, label, info.st_size, info.st_mtime_ns))
    return _digest({"settings": settings, "files": stats})


def _check_cache(paths: dict[str, Path], key: str, count: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The cached ``(images, labels)`` when the files are complete and built from ``key``; else why not."""
    if not paths["meta"].is_file():
        return "missing"
    try:
        meta = json.loads(paths["meta"].read_text())
        # copy-on-write: writable views, the file never changes; allow_pickle=False: an object array (a
        # pickle, which could run code) is refused with a ValueError, i.e. the cache counts as corrupt
        images = np.load(paths["images"], mmap_mode="c", allow_pickle=False)
        labels = np.load(paths["labels"], allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        return f"corrupt ({type(err).__name__}: {str(err)[:120]})"
    if meta.get("key") != key:
        return "stale (the source files or the resize settings changed since it was built)"
    expected = tuple(meta.get("shape", ()))
    if images.dtype != np.uint8 or images.shape != expected or len(images) != count or labels.shape != (count,):
        return f"corrupt (holds {images.dtype} {images.shape} and {labels.shape} labels, expected uint8 {expected})"
    return images, labels


def _decode(split: Dataset, num_workers: int, img_size: int, interpolation: str) -> tuple[list[np.ndarray], list[int]]:
    """Every image of ``split`` as an H x W x 3 uint8 array (resized to ``img_size`` when sizes differ)."""
    # A generator of its own, so that building the cache (first run only) leaves the global stream alone.
    loader = DataLoader(ArrayItems(split), batch_size=64, shuffle=False, num_workers=num_workers, collate_fn=collate_as_list,
                        generator=torch.Generator().manual_seed(0))
    arrays, labels = [], []
    for items in loader:
        for array, label in items:
            arrays.append(array)
            labels.append(label)
    if len({array.shape for array in arrays}) > 1:
        mode = _interpolation(interpolation)
        arrays = [
            TF.resize(torch.from_numpy(a).permute(2, 0, 1), [img_size, img_size], interpolation=mode, antialias=True)
            .permute(1, 2, 0).numpy()
            for a in arrays
        ]
    return arrays, labels


def _write(paths: dict[str, Path], arrays: list[np.ndarray], labels: list[int], key: str) -> None:
    folder = paths["images"].parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {name: path.with_name(f".{path.name}.{os.getpid()}.tmp") for name, path in paths.items()}
    shape = (len(arrays), *arrays[0].shape)
    try:
        out = np.lib.format.open_memmap(tmp["images"], mode="w+", dtype=np.uint8, shape=shape)
        for index, array in enumerate(arrays):
            out[index] = array
        out.flush()
        del out
        with tmp["labels"].open("wb") as f:
            np.save(f, np.asarray(labels, dtype=np.int64))
        tmp["meta"].write_text(json.dumps({"key": key, "shape": list(shape), "format": CACHE_FORMAT}) + "\n")
        os.replace(tmp["images"], paths["images"])
        os.replace(tmp["labels"], paths["labels"])
        os.replace(tmp["meta"], paths["meta"])  # last: the cache counts as complete only from here on
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def cached_split(
    split: Dataset,
    *,
    cache_dir: str | Path,
    owner: str,
    name: str,
    img_size: int,
    interpolation: str,
    num_workers: int = 0,
) -> ArrayImageDataset:
    """``split`` as a uint8 :class:`ArrayImageDataset`: memory-mapped from the cache for image files
    (built first when missing, stale or corrupt), the arrays themselves for in-memory splits."""
    if isinstance(split, ArrayImageDataset):
        return split
    samples = _file_samples(split)
    settings = _resize_settings(img_size, interpolation)
    if samples is None:  # an in-memory dataset of another kind: decode it, nothing to key a file on
        arrays, labels = _decode(split, num_workers, img_size, interpolation)
        return ArrayImageDataset(np.stack(arrays), labels)
    stem = f"{owner}-{name.replace('/', '_')}-{_digest({'settings': settings, 'files': samples})[:16]}"
    paths = cache_paths(Path(cache_dir).expanduser(), stem)
    key = _stat_key(samples, settings)
    found = _check_cache(paths, key, len(samples))
    if not isinstance(found, str):
        log.info("data.pipeline=device: %s split read from the cache %s", name, paths["images"])
        return ArrayImageDataset(*found)
    if found != "missing":
        log.warning("data.cache_dir: the %s cache %s is %s; rebuilding it", name, paths["images"], found)
    arrays, labels = _decode(split, num_workers, img_size, interpolation)
    try:
        _write(paths, arrays, labels, key)
    except OSError as err:
        raise DataError(
            f"data.cache_dir: cannot write the {name} cache into {paths['images'].parent} ({err.strerror or err}); "
            "point data.cache_dir at a writable folder"
        ) from err
    images = np.load(paths["images"], mmap_mode="c", allow_pickle=False)
    log.info("data.pipeline=device: %s split decoded once into %s (%d images, %.1f MB)", name, paths["images"],
             len(images), images.nbytes / 2**20)
    return ArrayImageDataset(images, np.asarray(labels, dtype=np.int64))


__all__ = ["CACHE_FORMAT", "cache_paths", "cached_split"]
