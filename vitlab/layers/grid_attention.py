"""Grid (dilated) attention: tokens ``g`` pixels apart attend to each other.

``g`` is the stride between the tokens of a group, so a group holds ``(H/g) x (W/g)`` tokens and
there are ``g^2`` groups; ``g = 1`` is full attention over the map. (MaxViT's grid instead fixes the
number of tokens per group.)
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from vitlab.layers.attention import Attention


def grid_partition(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * g^2, (H/g) * (W/g), C)``; group ``b * g^2 + gy * g + gx`` holds the
    tokens at ``(i * g + gy, j * g + gx)`` in row-major ``(i, j)`` order."""
    B, H, W, C = x.shape
    g = grid_size
    x = x.view(B, H // g, g, W // g, g, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B * g * g, (H // g) * (W // g), C)


def grid_unpartition(groups: torch.Tensor, grid_size: int, height: int, width: int) -> torch.Tensor:
    """Exact inverse of :func:`grid_partition`."""
    g = grid_size
    C = groups.shape[-1]
    x = groups.view(-1, g, g, height // g, width // g, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, height, width, C)


class GridAttentionBlock(nn.Module):
    """``x + drop_path(grid_attn(LN(x)))`` on channels-last ``(B, H, W, C)`` maps."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_bias=True, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, H, W, C = x.shape
        out, probs = self.attn(grid_partition(self.norm(x), self.grid_size), need_weights)
        x = self.drop_path(grid_unpartition(out, self.grid_size, H, W)).add_(x)  # in place on the fresh copy
        if probs is not None:
            g2 = self.grid_size**2
            probs = probs.view(B, g2, *probs.shape[1:])  # (B, g^2, heads, N, N)
        return x, probs
