"""The clear-vit family: one ViT backbone with pluggable attention and positional encodings."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info

from vitlab.families.classifier import ImageClassifier


class ViTClassifier(ImageClassifier):
    """The clear-vit ViT variants (``vitlab.models.vit``).

    ``attention_maps(images)`` gives, per block ``i``, ``"blocks.i"`` ``(B, heads, N, N)`` (CLS first)
    and ``"blocks.i.cls"``, the CLS-to-patch weights on the patch grid ``(B, heads, H/p, W/p)``; the
    differential variant adds its two softmax maps ``"blocks.i.softmax1"`` / ``"softmax2"`` and its
    ``"blocks.i"`` is ``A1 - lambda A2``, whose rows need not sum to 1. The per-validation softmax
    check therefore tests the full maps of every block, or the two softmax maps where a block has
    them, and never the CLS rows (a part of a row) or a differential map.

    The entropy-modulated variant also logs the epoch means of its per-token factor
    (``train/entropy_mean``) and of lambda (``train/lambda_mean``): the network returns them with
    ``return_aux`` and :class:`ImageClassifier` logs them.
    """

    def attention_normalisation_error(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        checked = []
        for name, m in maps.items():
            if name.endswith(".cls"):
                continue
            if f"{name}.softmax1" in maps:  # a differential map: check A1 and A2 instead
                continue
            checked.append((m.float().sum(-1) - 1).abs().max())
        return max(checked)

    def on_fit_start(self) -> None:
        net = self.net
        rank_zero_info(
            f"ViT variant: attention={net.attention}, rope={net.rope}, ape={net.pos_embed is not None}, "
            f"cpe={net.peg is not None}, patch {net.patch_size} -> {net.grid[0]}x{net.grid[1]} grid + CLS"
        )
