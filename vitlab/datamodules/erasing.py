"""Random erasing as the clear-vit original did it (``recipe.augment.random_erasing_style=clear_vit``).

torchvision's RandomErasing with ``value="random"`` (the default style here) fills the box with
per-pixel N(0, 1) noise and draws the box's aspect ratio log-uniformly, with 10 tries to fit it.
The clear-vit original filled the box with one value per channel, drawn U(0, 1) (in normalised
space, after Normalize), drew the aspect ratio uniformly between its bounds and tried up to 100
times. Everything else (probability, area range) is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class ChannelConstantErasing(torch.nn.Module):
    """Erase one box of a normalised ``C x H x W`` image with probability ``p``.

    Box area ~ U(scale) x H x W, aspect ratio (height / width) ~ U(ratio); each channel of the box
    is set to its own constant ~ U(0, 1). The image is returned unchanged when no box fits in
    ``tries`` draws. Draws come from torch's global generator (seeded per loader worker).
    """

    def __init__(self, p: float, scale: Sequence[float], ratio: Sequence[float], tries: int = 100) -> None:
        super().__init__()
        self.p = float(p)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.tries = tries

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.p:
            return image
        channels, height, width = image.shape[-3:]
        for _ in range(self.tries):
            area = self._uniform(*self.scale) * height * width
            aspect = self._uniform(*self.ratio)
            box_h = int(round(math.sqrt(area * aspect)))
            box_w = int(round(math.sqrt(area / aspect)))
            if 0 < box_h < height and 0 < box_w < width:
                top = int(torch.randint(0, height - box_h + 1, ()).item())
                left = int(torch.randint(0, width - box_w + 1, ()).item())
                fill = torch.rand(channels, 1, 1, dtype=image.dtype, device=image.device)
                image = image.clone()
                image[..., top : top + box_h, left : left + box_w] = fill
                return image
        return image

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio} (uniform), fill=U(0, 1) per channel, tries={self.tries}"
