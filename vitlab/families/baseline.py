"""The baseline family: timm models adapted to small images, trained with the shared classifier."""

from __future__ import annotations

import math

import torch

from vitlab.families.classifier import ImageClassifier
from vitlab.layers.attention_maps import TokenMap
from vitlab.models.baselines import timm_attention_maps, timm_attention_modules


class BaselineClassifier(ImageClassifier):
    """A timm baseline. Transformers among them (DeiT, Swin, MaxViT) expose their attention
    probabilities ``{module name: (B*, heads, N, N)}`` through ``attention_maps``; the convolutional
    ones have none."""

    @property
    def has_attention_maps(self) -> bool:
        return bool(timm_attention_modules(self.net))

    def attention_maps(self, images: torch.Tensor) -> dict[str, TokenMap]:
        if not self.has_attention_maps:
            raise NotImplementedError(f"{type(self.net).__name__} has no attention layers")
        # timm's hooks give bare tensors (B * windows, heads, N, N): the prefix is the network's own
        # count (DeiT's CLS), windows (Swin, MaxViT) have none; the rest is a square grid.
        prefix = getattr(self.net, "num_prefix_tokens", 0)
        maps = {}
        for name, m in timm_attention_maps(self.net, images).items():
            side = math.isqrt(m.shape[-1] - prefix)
            maps[name] = TokenMap(m, grid=(side, side), prefix_tokens=prefix)
        return maps
