"""Checks of the settings an :class:`~vitlab.datamodules.base.ImageDataModule` takes: each wrong kind
or out-of-range value is one :class:`ConfigError` line naming its key as typed on the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vitlab.errors import ConfigError

# Where the train augmentations run: in the loader's worker processes, or on the accelerator.
DATA_PIPELINES = ("workers", "device")


def check_bool(value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")


def check_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_channels(values: Sequence[float], key: str, positive: bool) -> tuple[float, float, float]:
    """Three per-channel numbers (R, G, B) as floats; ``positive``: each must be > 0."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 3:
        raise ConfigError(f"{key}: expected three numbers (R, G, B), got {values!r}")
    if positive and min(values) <= 0:
        raise ConfigError(f"{key}: every value must be > 0, got {list(values)}")
    return tuple(float(v) for v in values)


def check_settings(num_classes, img_size, batch_size, num_workers, repeated_aug, pin_memory, persistent_workers,
                   cache, subset, val_size, pipeline) -> None:
    """One line naming the key for each setting of the wrong kind or out of range."""
    if pipeline not in DATA_PIPELINES:
        raise ConfigError(f"data.pipeline: unknown pipeline {pipeline!r}; use {' or '.join(DATA_PIPELINES)}")
    check_int(num_classes, "data.num_classes")
    check_int(img_size, "data.img_size")
    check_int(batch_size, "recipe.batch_size")
    check_int(num_workers, "hardware.num_workers", minimum=0)
    check_int(repeated_aug, "recipe.repeated_aug")
    check_bool(pin_memory, "hardware.pin_memory")
    check_bool(persistent_workers, "data.persistent_workers")
    check_bool(cache, "data.cache")
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ConfigError(
                f"data.subset: expected null (all images) or a count of images per class >= 1, got {subset!r}"
            )
    if isinstance(val_size, bool) or not (
        (isinstance(val_size, int) and val_size >= 0) or (isinstance(val_size, float) and 0 <= val_size < 1)
    ):
        raise ConfigError(
            f"data.val_size: expected an image count >= 0 or a fraction in (0, 1), got {val_size!r}; "
            "use 0 to validate on the test split"
        )


def check_device_augment(augment: Mapping[str, Any]) -> None:
    """``augment`` (resolved) is one the device pipeline runs: it erases as torchvision does and
    crops no full-size images."""
    if augment["random_erasing"] > 0 and augment["random_erasing_style"] != "torchvision":
        raise ConfigError(
            f"data.pipeline: device erases as torchvision does, not in the {augment['random_erasing_style']!r} "
            "style; use data.pipeline=workers, or recipe.augment.random_erasing_style=torchvision"
        )
    if augment["random_resized_crop"] is not None:
        raise ConfigError(
            "data.pipeline: device does not support recipe.augment.random_resized_crop (it crops the full-size "
            "images); use data.pipeline=workers, or set recipe.augment.random_resized_crop=null"
        )
