"""Pre-norm transformer encoder block."""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from vitlab.layers.attention import Attention
from vitlab.layers.dropout import Dropout


class TransformerBlock(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``, with optional drop-path.

    ``attn_layer`` replaces the default :class:`Attention` (built from ``qkv_bias``, ``proj_bias``,
    ``attn_drop`` and ``drop``) by any module called as ``attn(x, need_weights=..., **attn_kwargs)``
    that returns ``(output, weights or None)``; ``forward``'s extra keyword arguments are passed to it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        attn_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_layer is None:
            attn_layer = Attention(
                dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=drop
            )
        self.attn = attn_layer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, bias=mlp_bias, drop=drop)
        # timm's Mlp holds nn.Dropout; the cheaper-mask Dropout has no parameters, so state dicts
        # keep their keys.
        self.mlp.drop1, self.mlp.drop2 = Dropout(drop), Dropout(drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, **attn_kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, probs = self.attn(self.norm1(x), need_weights=need_weights, **attn_kwargs)
        x = x + self.drop_path1(out)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, probs
