"""The clear-vit family: one ViT backbone with pluggable attention and positional encodings."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from vitlab.families.classifier import ImageClassifier


class ViTClassifier(ImageClassifier):
    """The clear-vit ViT variants (``vitlab.models.vit``).

    ``attention_maps(images)`` gives, per block ``i``, ``"blocks.i"`` ``(B, heads, N, N)`` (CLS first)
    and ``"blocks.i.cls"``, the CLS-to-patch weights on the patch grid ``(B, heads, H/p, W/p)``; the
    differential variant adds its two softmax maps ``"blocks.i.softmax1"`` / ``"softmax2"`` and its
    ``"blocks.i"`` is ``A1 - lambda A2``, whose rows need not sum to 1. The maps say which of them are
    distributions, so the shared per-validation softmax check tests the full maps of every block, or
    the two softmax maps where a block has them, and never the CLS rows or a differential map.

    The entropy-modulated variant also logs the epoch means of its per-token factor
    (``train/entropy_mean``) and of lambda (``train/lambda_mean``): the network returns them with
    ``return_aux`` and :class:`ImageClassifier` logs them.
    """

    def on_fit_start(self) -> None:
        net = self.net
        rank_zero_info(
            f"ViT variant: attention={net.attention}, rope={net.rope}, ape={net.pos_embed is not None}, "
            f"cpe={net.peg is not None}, patch {net.patch_size} -> {net.grid[0]}x{net.grid[1]} grid + CLS"
        )
