"""The Mini-ViT family: the shared classifier plus the seed's attention-correctness check."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from vitlab.families.classifier import ImageClassifier


class MiniViTClassifier(ImageClassifier):
    """Mini-ViT with the seed's softmax check done cheaply: on the first validation batch of every
    epoch the attention rows of every block are summed, the worst deviation from 1 is logged as
    ``val/attn_rowsum_err``, and the run stops if it exceeds ``rowsum_tol``. The attention shapes are
    logged once at the start of fitting."""

    rowsum_tol: float = 1e-4

    def on_fit_start(self) -> None:
        net = self.net
        heads = net.blocks[0].attn.num_heads
        head_dim = net.blocks[0].attn.head_dim
        tokens = net.pos_embed.shape[1]
        rank_zero_info(
            f"Mini-ViT attention shapes per block: q/k/v (B, {heads}, {tokens}, {head_dim}), "
            f"A (B, {heads}, {tokens}, {tokens}), merged heads (B, {tokens}, {heads * head_dim})"
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if batch_idx == 0:
            maps = self.attention_maps(batch[0])
            err = max((m.float().sum(-1) - 1).abs().max() for m in maps.values())
            self.log("val/attn_rowsum_err", err)
            if err > self.rowsum_tol:
                raise RuntimeError(f"attention rows do not sum to 1 (max deviation {err:.2e} > {self.rowsum_tol:.0e})")
