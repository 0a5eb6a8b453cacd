"""The OutGridViT family: the shared classifier (its maps carry their layouts, so the shared
softmax check reads the dynamic kernels over the taps and the grid attention over the keys)."""

from __future__ import annotations

from vitlab.families.classifier import ImageClassifier


class OutGridClassifier(ImageClassifier):
    """OutGridViT Model A or B. ``attention_maps`` gives, per stage and block, the dynamic-kernel
    weights ``(B, heads, 9, H, W)`` (normalised over the taps, axis 2) and the grid-attention
    probabilities ``(B, g*g, heads, N, N)`` (normalised over the keys, last axis)."""
