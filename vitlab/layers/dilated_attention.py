"""Multi-scale dilated attention (QAViT's second branch).

Each "dilation" ``s`` subsamples the whole token grid with stride ``s`` (not dilated windows); the
subsampled grids are pooled and their tokens become the keys/values that every full-resolution
query attends to, together with the bank tokens.

Subsampling, pooling and concatenation are all linear in the tokens, so they are precomputed as one
``(keys, H*W)`` matrix: the forward is one matmul, with no loop over scales. Two layouts:

* ``grid`` (default): each scale is average-pooled 2x2 on its own 2-D grid (a partial
  window at the border averages the tokens it has), so no pair straddles a row end or a scale
  boundary and no token is dropped;
* ``faithful`` (the seed): the scales' raster sequences are concatenated and pooled in pairs along
  that 1-D sequence, then cut to the first ``max_len`` pooled tokens (14 of the 25 stride-3 tokens
  of a 14x14 grid are never seen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vitlab.layers.branch_attention import SequenceCompression, branch_attend
from vitlab.layers.dropout import Dropout

POOLINGS = ("grid", "faithful")


def _strided_indices(grid: tuple[int, int], stride: int) -> torch.Tensor:
    """Raster indices of the grid positions kept by stride ``stride``, as a 2-D ``(h, w)`` tensor."""
    H, W = grid
    rows, cols = torch.arange(0, H, stride, device="cpu"), torch.arange(0, W, stride, device="cpu")
    return rows[:, None] * W + cols[None, :]


def multiscale_pool_matrix(
    grid: tuple[int, int], dilations: Sequence[int], pooling: str = "grid", max_len: int | None = None
) -> torch.Tensor:
    """The ``(keys, H*W)`` matrix that maps grid tokens to the pooled multi-scale tokens."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    N = grid[0] * grid[1]
    groups: list[list[int]] = []  # the grid tokens averaged into each pooled token
    if pooling == "grid":
        for s in dilations:
            idx = _strided_indices(grid, s)
            h, w = idx.shape
            for i in range(math.ceil(h / 2)):
                for j in range(math.ceil(w / 2)):
                    groups.append(idx[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].flatten().tolist())
    else:
        sequence = torch.cat([_strided_indices(grid, s).flatten() for s in dilations]).tolist()
        groups = [sequence[2 * m : 2 * m + 2] for m in range(len(sequence) // 2)]
        if max_len is not None:
            groups = groups[:max_len]
    matrix = torch.zeros(len(groups), N, device="cpu")  # also when built under a meta-device context
    for row, members in enumerate(groups):
        matrix[row, members] = 1.0 / len(members)
    return matrix


class MultiScaleDilatedAttention(nn.Module):
    """Full-resolution queries attend to the pooled multi-scale tokens plus the bank's raw tokens.

    One ``qkv`` projection as the seed; queries use only its Q slice on the full-resolution tokens
    and keys/values its K/V slices on the pooled tokens (numerically what the seed computes, without
    its discarded full-resolution K/V:).

    Args:
        grid: the token grid ``(H, W)``.
        dilations: the subsampling strides.
        pooling: ``grid`` or ``faithful`` (module docstring).
        compress_k: Linformer projection of the pooled keys/values to this many rows (``None`` = none).
            With ``grid`` pooling it is sized from the real number of pooled tokens and never expands
            them (``min(compress_k, keys)``); the ``faithful`` layout uses the seed's fixed length
            ``max(compress_k, 128)`` (shorter inputs zero-padded) and keeps its first 128 pooled tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        dilations: Sequence[int] = (1, 2, 3),
        pooling: str = "grid",
        compress_k: int | None = 64,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if not dilations or any(int(s) < 1 for s in dilations):
            raise ValueError(f"dilations must be positive strides, got {list(dilations)}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if pooling == "faithful":
            length = max(compress_k or 0, 128)
            pool = multiscale_pool_matrix(grid, dilations, pooling, max_len=length)
            self.compress = SequenceCompression(length, compress_k) if compress_k else None
        else:
            pool = multiscale_pool_matrix(grid, dilations, pooling)
            self.compress = SequenceCompression(pool.shape[0], min(compress_k, pool.shape[0])) if compress_k else None
        self.register_buffer("pool", pool, persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        self.attn_drop = attn_drop
        self.use_flash = use_flash

    @property
    def num_pooled(self) -> int:
        return self.pool.shape[0]

    def forward(
        self, x: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, H*W, dim)``, bank ``(B, S, dim)`` -> ``(B, H*W, dim)`` and, if asked, the weights
        ``(B, heads, H*W, keys + S)``."""
        B, N, C = x.shape
        heads, hd = self.num_heads, self.head_dim
        pooled = torch.matmul(self.pool.to(x.dtype), x)  # (B, keys, C)
        w, b = self.qkv.weight, self.qkv.bias
        q = nn.functional.linear(x, w[:C], b[:C]).view(B, N, heads, hd).transpose(1, 2)
        kv = nn.functional.linear(pooled, w[C:], b[C:]).view(B, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.compress is not None:
            k, v = self.compress(k, v)
        k = torch.cat((k, bank_k.view(B, -1, heads, hd).transpose(1, 2).to(k.dtype)), dim=2)
        v = torch.cat((v, bank_v.view(B, -1, heads, hd).transpose(1, 2).to(v.dtype)), dim=2)
        dropout_p = self.attn_drop if self.training else 0.0
        out, probs = branch_attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, use_flash=self.use_flash)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C))), probs
