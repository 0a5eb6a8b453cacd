"""The OutGridViT family: the shared classifier, with maps of two layouts to check."""

from __future__ import annotations

import torch

from vitlab.families.classifier import ImageClassifier


class OutGridClassifier(ImageClassifier):
    """OutGridViT Model A or B. ``attention_maps`` gives, per stage and block, the dynamic-kernel
    weights ``(B, heads, 9, H, W)`` (normalised over the taps, axis 2) and the grid-attention
    probabilities ``(B, g*g, heads, N, N)`` (normalised over the keys, last axis)."""

    def attention_normalisation_error(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return max((m.float().sum(2 if name.endswith("kernel") else -1) - 1).abs().max() for name, m in maps.items())
