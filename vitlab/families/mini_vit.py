"""The Mini-ViT family: the shared classifier plus the seed's attention-shape report."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from vitlab.families.classifier import ImageClassifier


class MiniViTClassifier(ImageClassifier):
    """Mini-ViT. The seed verified its attention at run time; here the softmax rows are checked once
    per validation (see :class:`ImageClassifier`) and the attention shapes are reported once when
    fitting starts."""

    def on_fit_start(self) -> None:
        attn = self.net.blocks[0].attn
        heads, head_dim, tokens = attn.num_heads, attn.head_dim, self.net.pos_embed.shape[1]
        rank_zero_info(
            f"Mini-ViT attention shapes per block: q/k/v (B, {heads}, {tokens}, {head_dim}), "
            f"A (B, {heads}, {tokens}, {tokens}), merged heads (B, {tokens}, {heads * head_dim})"
        )
