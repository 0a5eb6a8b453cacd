"""The baseline family: timm models adapted to small images, trained with the shared classifier."""

from __future__ import annotations

import torch

from vitlab.families.classifier import ImageClassifier
from vitlab.models.baselines import timm_attention_maps, timm_attention_modules


class BaselineClassifier(ImageClassifier):
    """A timm baseline. Transformers among them (DeiT, Swin, MaxViT) expose their attention
    probabilities ``{module name: (B*, heads, N, N)}`` through ``attention_maps``; the convolutional
    ones have none."""

    @property
    def has_attention_maps(self) -> bool:
        return bool(timm_attention_modules(self.net))

    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.has_attention_maps:
            raise NotImplementedError(f"{type(self.net).__name__} has no attention layers")
        return timm_attention_maps(self.net, images)
