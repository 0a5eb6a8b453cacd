"""Train and eval image transforms built from a recipe's ``augment`` block.

The pipelines use ``torchvision.transforms.v2`` so they take PIL images (image folders) and uint8
CHW tensors (array datasets) alike and always return a plain, normalised float32 CHW tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from vitlab.config import AugmentConfig
from vitlab.errors import ConfigError

from .erasing import ChannelConstantErasing
from .randaug_legacy import LegacyRandAugment
from .settings import check_int

#: Every augmentation key and its default: the fields of the recipe schema's ``AugmentConfig``
#: (vitlab/config.py), where each is written and explained once.
AUGMENT_DEFAULTS: dict[str, Any] = dataclasses.asdict(AugmentConfig())

RANDOM_ERASING_STYLES = ("torchvision", "clear_vit")

_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}

_AUTO_AUGMENT_POLICIES = {policy.value: policy for policy in v2.AutoAugmentPolicy}
_RAND_AUGMENT_KEYS = ("num_ops", "magnitude")
# v2.RandAugment's default number of magnitude bins; a magnitude must index one of them.
_RAND_AUGMENT_BINS = 31

# (height, width), one side of a square, or None when it varies from image to image (always resize).
Size = int | Sequence[int] | None


def _key(name: str) -> str:
    return f"recipe.augment.{name}"


def _check_range(value: Any, name: str, upper: float | None) -> tuple[float, float]:
    """A ``[low, high]`` pair with ``0 < low <= high`` (and ``high <= upper`` when given)."""
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{_key(name)}: expected two numbers [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f" <= {upper:g}" if upper is not None else ""
        raise ConfigError(f"{_key(name)}: expected 0 < low <= high{bound}, got {value!r}")
    return low, high


def resolve_augment(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``augment`` over :data:`AUGMENT_DEFAULTS` and validate every value.

    Raises :class:`ConfigError` naming ``recipe.augment.<key>`` for unknown keys and bad values.
    """
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{_key(unknown[0])}: unknown augmentation key; known keys: {', '.join(AUGMENT_DEFAULTS)}"
        )
    resolved = {**AUGMENT_DEFAULTS, **augment}

    if not isinstance(resolved["hflip"], bool):
        raise ConfigError(f"{_key('hflip')}: expected true or false, got {resolved['hflip']!r}")
    check_int(resolved["crop_padding"], _key("crop_padding"), minimum=0)

    policy = resolved["auto_augment"]
    if policy is not None and policy not in _AUTO_AUGMENT_POLICIES:
        raise ConfigError(
            f"{_key('auto_augment')}: unknown policy {policy!r}; use null or one of "
            f"{', '.join(_AUTO_AUGMENT_POLICIES)}"
        )

    rand_augment = resolved["rand_augment"]
    if rand_augment is not None:
        if not isinstance(rand_augment, Mapping):
            raise ConfigError(
                f"{_key('rand_augment')}: expected null or {{num_ops: int, magnitude: int}}, got {rand_augment!r}"
            )
        if policy is not None:
            raise ConfigError(
                f"{_key('rand_augment')}: cannot be combined with {_key('auto_augment')}={policy!r}; "
                "set one of them to null"
            )
        extra = sorted(set(rand_augment) - set(_RAND_AUGMENT_KEYS))
        missing = [k for k in _RAND_AUGMENT_KEYS if k not in rand_augment]
        if extra or missing:
            raise ConfigError(
                f"{_key('rand_augment')}: expected exactly the keys num_ops and magnitude, got {sorted(rand_augment)}"
            )
        check_int(rand_augment["num_ops"], _key("rand_augment.num_ops"), minimum=1)
        magnitude = check_int(rand_augment["magnitude"], _key("rand_augment.magnitude"), minimum=0)
        if magnitude >= _RAND_AUGMENT_BINS:
            raise ConfigError(
                f"{_key('rand_augment.magnitude')}: must be below {_RAND_AUGMENT_BINS}, got {magnitude}"
            )
        resolved["rand_augment"] = {k: rand_augment[k] for k in _RAND_AUGMENT_KEYS}

    erasing = resolved["random_erasing"]
    if isinstance(erasing, bool) or not isinstance(erasing, int | float) or not 0.0 <= erasing <= 1.0:
        raise ConfigError(f"{_key('random_erasing')}: expected a probability in [0, 1], got {erasing!r}")
    resolved["random_erasing_scale"] = _check_range(resolved["random_erasing_scale"], "random_erasing_scale", 1.0)
    resolved["random_erasing_ratio"] = _check_range(resolved["random_erasing_ratio"], "random_erasing_ratio", None)
    if resolved["random_resized_crop"] is not None:
        resolved["random_resized_crop"] = _check_range(resolved["random_resized_crop"], "random_resized_crop", 1.0)
    if resolved["random_erasing_style"] not in RANDOM_ERASING_STYLES:
        raise ConfigError(
            f"{_key('random_erasing_style')}: unknown style {resolved['random_erasing_style']!r}; use one of {', '.join(RANDOM_ERASING_STYLES)}"
        )
    if not isinstance(resolved["randaug_legacy"], bool):
        raise ConfigError(f"{_key('randaug_legacy')}: expected true or false, got {resolved['randaug_legacy']!r}")
    if resolved["randaug_legacy"] and (policy is not None or rand_augment is not None):
        other = "auto_augment" if policy is not None else "rand_augment"
        raise ConfigError(f"{_key('randaug_legacy')}: cannot be combined with {_key(other)}; set {_key(other)}=null")
    return resolved


def _interpolation(name: str) -> v2.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise ConfigError(f"data.interpolation: unknown mode {name!r}; use one of {', '.join(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


def _as_hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _resize_if_needed(img_size: int, native_size: Size, interpolation: str = "bicubic") -> list[v2.Transform]:
    # Always to a square (aspect ratio not kept), so that images of any shape stack into one batch.
    if native_size is not None and _as_hw(native_size) == (img_size, img_size):
        return []
    return [v2.Resize((img_size, img_size), interpolation=_interpolation(interpolation), antialias=True)]


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(
    augment: Mapping[str, Any] | None,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: Size,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Training pipeline in the seeds' order: resize (only if ``native_size != img_size``; always
    when ``native_size`` is None), flip, padded crop, AutoAugment or RandAugment, to float in [0, 1],
    normalise, random erasing.

    With ``random_resized_crop`` set, a RandomResizedCrop to ``img_size`` (bilinear) replaces the
    resize and the padded crop and comes first, before the flip (the ImageNet order).
    """
    aug = resolve_augment(augment)
    if aug["random_resized_crop"] is not None:
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(
                img_size, scale=aug["random_resized_crop"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
            )
        ]
    else:
        steps = _resize_if_needed(img_size, native_size, interpolation)
    if aug["hflip"]:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if aug["crop_padding"] > 0 and aug["random_resized_crop"] is None:
        steps.append(v2.RandomCrop(img_size, padding=aug["crop_padding"], fill=0))
    if aug["auto_augment"] is not None:
        steps.append(v2.AutoAugment(_AUTO_AUGMENT_POLICIES[aug["auto_augment"]]))
    if aug["rand_augment"] is not None:
        steps.append(v2.RandAugment(**aug["rand_augment"]))
    if aug["randaug_legacy"]:
        steps.append(LegacyRandAugment())
    steps += _to_normalised_float(mean, std)
    if aug["random_erasing"] > 0 and aug["random_erasing_style"] == "clear_vit":
        steps.append(
            ChannelConstantErasing(aug["random_erasing"], aug["random_erasing_scale"], aug["random_erasing_ratio"])
        )
    elif aug["random_erasing"] > 0:
        steps.append(
            v2.RandomErasing(
                p=aug["random_erasing"],
                scale=aug["random_erasing_scale"],
                ratio=aug["random_erasing_ratio"],
                value="random",
            )
        )
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: Size,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Evaluation pipeline: resize to ``img_size x img_size`` (only if needed; no centre crop), to
    float in [0, 1], normalise."""
    return v2.Compose(
        [*_resize_if_needed(img_size, native_size, interpolation), *_to_normalised_float(mean, std), v2.ToPureTensor()]
    )
