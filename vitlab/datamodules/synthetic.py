"""A procedurally generated, learnable image classification task that needs no files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vitlab.errors import ConfigError

from .base import ImageDataModule
from .datasets import ArrayImageDataset
from .samplers import derive_seed


def _stripes(t: torch.Tensor, frequency: float) -> torch.Tensor:
    return torch.floor((t + 2.0) * frequency) % 2 == 0


def _box(u: torch.Tensor, v: torch.Tensor, half: float = 1.0) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) < half


# Masks in the shape's own frame: (u, v) is the pixel position relative to the shape's centre,
# rotated and divided by its radius, so every shape spans roughly [-1, 1]^2.
_SHAPES: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], ...] = (
    ("disk", lambda u, v: u * u + v * v < 1.0),
    ("square", lambda u, v: _box(u, v, 0.8)),
    ("ring", lambda u, v: (u * u + v * v < 1.0) & (u * u + v * v > 0.3)),
    ("cross", lambda u, v: _box(u, v) & (torch.minimum(u.abs(), v.abs()) < 0.3)),
    ("horizontal stripes", lambda u, v: _box(u, v) & _stripes(v, 2.0)),
    ("vertical stripes", lambda u, v: _box(u, v) & _stripes(u, 2.0)),
    ("checkerboard", lambda u, v: _box(u, v) & (_stripes(u, 2.0) == _stripes(v, 2.0))),
    ("triangle", lambda u, v: (v < 0.8) & (u.abs() < 0.5 * (v + 1.0))),
    ("diagonal stripes", lambda u, v: _box(u, v) & _stripes(u + v, 1.4)),
)
_PALETTES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.90, 0.20, 0.15)),
    ("green", (0.15, 0.75, 0.25)),
    ("blue", (0.20, 0.35, 0.95)),
    ("yellow", (0.95, 0.80, 0.10)),
)
# 9 shapes and 4 palettes are coprime, so class c -> (c mod 9, c mod 4) gives 36 distinct
# (shape, colour) pairs and neighbouring classes differ in both.
MAX_CLASSES = len(_SHAPES) * len(_PALETTES)


def class_names(num_classes: int) -> list[str]:
    """Human-readable names, e.g. ``"red disk"``, in label order."""
    return [f"{_PALETTES[c % len(_PALETTES)][0]} {_SHAPES[c % len(_SHAPES)][0]}" for c in range(num_classes)]


def generate_images(
    num_images: int, num_classes: int, size: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``num_images`` uint8 ``size x size x 3`` images and their balanced, shuffled labels.

    Each image is one coloured shape (class = shape and colour palette) at a random position,
    scale and small rotation, with colour jitter, on a random grey-ish background, plus pixel noise.
    """

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    labels = (torch.arange(num_images) % num_classes)[torch.randperm(num_images, generator=generator)]
    shape_ids, palette_ids = labels % len(_SHAPES), labels % len(_PALETTES)

    radius = uniform(0.35, 0.7, num_images)
    centre = uniform(-1.0, 1.0, num_images, 2) * (1.0 - radius[:, None])
    angle = uniform(-0.3, 0.3, num_images)
    # Pixel centres in [-1, 1].
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    dx = grid[None, None, :] - centre[:, 0, None, None]
    dy = grid[None, :, None] - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (cos * dy - sin * dx) / radius[:, None, None]

    mask = torch.empty((num_images, size, size), dtype=torch.bool)
    for shape_id, (_, draw) in enumerate(_SHAPES):
        members = shape_ids == shape_id
        mask[members] = draw(u[members], v[members])

    palette = torch.tensor([rgb for _, rgb in _PALETTES])
    foreground = palette[palette_ids] * uniform(0.8, 1.1, num_images, 1) + uniform(-0.12, 0.12, num_images, 3)
    background = uniform(0.2, 0.8, num_images, 1) + uniform(-0.1, 0.1, num_images, 3)
    images = torch.where(mask[..., None], foreground[:, None, None, :], background[:, None, None, :])
    images += torch.randn(images.shape, generator=generator).mul_(0.08)
    # +0.5 then truncation rounds to the nearest level.
    images = images.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).to(torch.uint8)
    return images.numpy(), labels.numpy()


class SyntheticDataModule(ImageDataModule):
    """Coloured shapes on noisy backgrounds: a small ViT learns it, chance is ``1 / num_classes``.

    Up to 36 classes (9 shapes x 4 colours). Generated in :meth:`setup` from ``seed``; the train
    and test splits come from independent random streams. Images are ``img_size`` pixels natively.
    """

    def __init__(
        self,
        train_size: int = 2048,
        test_size: int = 512,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        val_size: int | float = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, mean=mean, std=std, val_size=val_size, **kwargs)
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ConfigError(f"data.num_classes: the synthetic task has 2 to {MAX_CLASSES} classes, got {num_classes}")
        if img_size < 16:
            raise ConfigError(f"data.img_size: the synthetic task needs at least 16 pixels, got {img_size}")
        for key, value in (("data.train_size", train_size), ("data.test_size", test_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: expected an integer >= 1, got {value!r}")
        self.train_size = train_size
        self.test_size = test_size
        self.classes = class_names(num_classes)

    def _load_split(self, train: bool) -> ArrayImageDataset:
        stream = "synthetic-train" if train else "synthetic-test"
        generator = torch.Generator().manual_seed(derive_seed(self.seed, stream))
        images, labels = generate_images(
            self.train_size if train else self.test_size, self.num_classes, self.img_size, generator
        )
        return ArrayImageDataset(images, labels)
