"""Token attention inside channel groups (QAViT's third branch, the seed's "channel group attention").

Despite the seed's name this is not channel-to-channel attention: the embedding is split
into ``G`` groups of ``dim / G`` channels, and inside each group the tokens attend to each other
through low-rank projections (``dim / G -> dim / (2G)``, shared by all groups; with the seed's sizes
a head dim of 4). The groups are folded into the batch dimension, so one SDPA call covers all of
them. The bank's tokens, projected to the same width, are extra keys/values shared by all groups.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.layers.branch_attention import branch_attend, cpu_plain_ops
from vitlab.layers.dropout import Dropout


class ChannelGroupTokenAttention(nn.Module):
    """Per-group token attention with bank keys.

    Args:
        num_groups: channel groups ``G``; ``dim / G`` must be even and ``dim / (2G)`` divisible by
            ``num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_groups: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_groups or (dim // num_groups) % 2:
            raise ValueError(f"embed_dim {dim} must split into num_groups {num_groups} groups of an even width")
        group_dim = dim // num_groups
        inner = group_dim // 2
        if inner % num_heads:
            raise ValueError(
                f"the channel-group width embed_dim / (2 num_groups) = {inner} is not divisible by num_heads {num_heads}"
            )
        self.num_groups, self.num_heads, self.group_dim, self.inner_dim = num_groups, num_heads, group_dim, inner
        self.q = nn.Linear(group_dim, inner)
        self.k = nn.Linear(group_dim, inner)
        self.v = nn.Linear(group_dim, inner)
        self.bank_k = nn.Linear(dim, inner)
        self.bank_v = nn.Linear(dim, inner)
        self.proj = nn.Linear(inner * num_groups, dim)
        self.proj_drop = Dropout(proj_drop)
        self.attn_drop = attn_drop
        self.use_flash = use_flash

    def forward(
        self, x: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, N, dim)``, bank ``(B, S, dim)`` -> ``(B, N, dim)`` and, if asked, the weights
        ``(B, groups, heads, N, N + S)``."""
        B, N, _ = x.shape
        G, heads = self.num_groups, self.num_heads
        hd = self.inner_dim // heads
        groups = x.view(B, N, G, self.group_dim)

        dropout_p = self.attn_drop if self.training else 0.0
        # With a head dim this small (4 at the seed's sizes), the plain-ops path's matmuls against the
        # keys and values run several times faster when each head's keys are stored transposed
        # (hd, N + S); SDPA's kernels want them as they are.
        transposed = cpu_plain_ops(x, dropout_p, need_weights)

        def heads_of(t: torch.Tensor) -> torch.Tensor:  # (B, N, G, inner) -> (B, G, heads, N, hd), a view
            return t.view(B, N, G, heads, hd).permute(0, 2, 3, 1, 4)

        def with_bank(t: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
            # (B, G, heads, N, hd) and the bank's (B, S, inner), shared by the groups -> (B * G, heads, N + S, hd),
            # in one copy: the bank is broadcast over the groups inside the concatenation.
            bank = bank.view(B, 1, -1, heads, hd).transpose(2, 3).to(t.dtype).expand(-1, G, -1, -1, -1)
            if transposed:
                return torch.cat((t.transpose(-2, -1), bank.transpose(-2, -1)), dim=-1).flatten(0, 1).transpose(-2, -1)
            return torch.cat((t, bank), dim=3).flatten(0, 1)

        q = heads_of(self.q(groups)).reshape(B * G, heads, N, hd)
        k = with_bank(heads_of(self.k(groups)), self.bank_k(bank_k))
        v = with_bank(heads_of(self.v(groups)), self.bank_v(bank_v))
        out, probs = branch_attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, use_flash=self.use_flash)
        out = out.view(B, G, heads, N, hd).permute(0, 3, 1, 2, 4).reshape(B, N, G * self.inner_dim)
        if probs is not None:
            probs = probs.view(B, G, heads, N, -1)
        return self.proj_drop(self.proj(out)), probs
