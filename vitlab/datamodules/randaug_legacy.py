"""The clear-vit seed's custom RandAugment, reproduced as ``randaug_legacy`` (docs/seeds/clear_vit.md).

It is not the RandAugment of the paper or of torchvision/timm: ``num_ops`` (3) operations are drawn
**with replacement** from 16, each applied at one fixed magnitude (m = 0.3) with a fixed sign:

==================  ==========================================================
autocontrast        -
equalize            -
rotate              +9 degrees (counter-clockwise), zero fill
solarize            invert pixels >= 178
color               saturation factor 1.3
contrast            factor 1.3
brightness          factor 1.3
sharpness           factor 1.3
shear_x, shear_y    0.3 **degrees** (the seed passed 0.3 as an angle, so nearly a no-op)
translate_x, _y     +25 px (content moves right / down), zero fill
posterize           keep 5 bits
solarize_add        brightness x1.3, then solarize at 178
invert              with probability 0.5
identity            -
==================  ==========================================================

Thresholds are on the 0-255 scale (divided by 255 for float tensors). Works on PIL images, uint8
(or float) CHW tensors and ``tv_tensors.Image`` through ``torchvision.transforms.v2.functional``;
randomness comes from torch's generator, so DataLoader worker seeding makes it reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["LEGACY_OPS", "LegacyRandAugment"]

LEGACY_OPS = (
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "posterize",
    "solarize_add",
    "invert",
    "identity",
)


def _is_image(x: Any) -> bool:
    return isinstance(x, Image.Image | torch.Tensor)


class LegacyRandAugment(v2.Transform):
    """``num_ops`` ops drawn with replacement from :data:`LEGACY_OPS`, each at its fixed magnitude.

    Args:
        num_ops: operations per image (the seed: 3).
        rotate_degrees, solarize_threshold, enhance_factor, shear_degrees, translate_px, posterize_bits,
        invert_prob: the seed's fixed magnitudes (m = 0.3).
    """

    def __init__(
        self,
        num_ops: int = 3,
        rotate_degrees: float = 9.0,
        solarize_threshold: float = 178.0,
        enhance_factor: float = 1.3,
        shear_degrees: float = 0.3,
        translate_px: int = 25,
        posterize_bits: int = 5,
        invert_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if num_ops < 1:
            raise ValueError(f"num_ops must be >= 1, got {num_ops}")
        self.num_ops = num_ops
        self.rotate_degrees = rotate_degrees
        self.solarize_threshold = solarize_threshold
        self.enhance_factor = enhance_factor
        self.shear_degrees = shear_degrees
        self.translate_px = translate_px
        self.posterize_bits = posterize_bits
        self.invert_prob = invert_prob

    def _threshold(self, img: Any) -> float:
        if isinstance(img, torch.Tensor) and img.is_floating_point():
            return self.solarize_threshold / 255.0
        return self.solarize_threshold

    def apply_op(self, img: Any, op: str) -> Any:
        """Apply one named operation at its fixed magnitude (``invert`` always inverts here; the coin
        flip happens in :meth:`forward`)."""
        if op == "identity":
            return img
        if op == "autocontrast":
            return F.autocontrast(img)
        if op == "equalize":
            return F.equalize(img)
        if op == "rotate":
            return F.rotate(img, self.rotate_degrees, interpolation=v2.InterpolationMode.NEAREST, fill=0)
        if op == "solarize":
            return F.solarize(img, self._threshold(img))
        if op == "color":
            return F.adjust_saturation(img, self.enhance_factor)
        if op == "contrast":
            return F.adjust_contrast(img, self.enhance_factor)
        if op == "brightness":
            return F.adjust_brightness(img, self.enhance_factor)
        if op == "sharpness":
            return F.adjust_sharpness(img, self.enhance_factor)
        if op in ("shear_x", "shear_y"):
            shear = [self.shear_degrees, 0.0] if op == "shear_x" else [0.0, self.shear_degrees]
            return F.affine(
                img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                interpolation=v2.InterpolationMode.NEAREST, fill=0, center=[0, 0],
            )
        if op in ("translate_x", "translate_y"):
            shift = [self.translate_px, 0] if op == "translate_x" else [0, self.translate_px]
            return F.affine(
                img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                interpolation=v2.InterpolationMode.NEAREST, fill=0,
            )
        if op == "posterize":
            return F.posterize(img, self.posterize_bits)
        if op == "solarize_add":
            return F.solarize(F.adjust_brightness(img, self.enhance_factor), self._threshold(img))
        if op == "invert":
            return F.invert(img)
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(LEGACY_OPS)}")

    def forward(self, *inputs: Any) -> Any:
        """Transforms the first image (PIL or tensor) among ``inputs``; other inputs pass unchanged."""
        flat = list(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], tuple | list) else list(inputs)
        index = next((i for i, x in enumerate(flat) if _is_image(x)), None)
        if index is None:
            raise TypeError("randaug_legacy needs a PIL image or an image tensor")
        img = flat[index]
        for op_index in torch.randint(len(LEGACY_OPS), (self.num_ops,)).tolist():
            op = LEGACY_OPS[op_index]
            if op == "invert" and torch.rand(()) >= self.invert_prob:
                continue
            img = self.apply_op(img, op)
        flat[index] = img
        if len(inputs) == 1 and not isinstance(inputs[0], tuple | list):
            return flat[0]
        return type(inputs[0])(flat) if len(inputs) == 1 else tuple(flat)

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, rotate={self.rotate_degrees}, solarize={self.solarize_threshold}, "
            f"factor={self.enhance_factor}, shear_deg={self.shear_degrees}, translate_px={self.translate_px}, "
            f"posterize_bits={self.posterize_bits}, invert_prob={self.invert_prob}"
        )
