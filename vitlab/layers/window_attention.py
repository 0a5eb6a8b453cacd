"""Spatial window attention with extra bank keys (QAViT's first branch).

The token grid is cut into non-overlapping ``window x window`` windows, which are folded into the
batch dimension, so one SDPA call attends inside every window of every image. A grid that the window
does not divide is zero-padded at the bottom/right; the padded positions are hidden from the keys by
a mask and cropped off again after the reverse (the seed padded in the partition, forgot
the padding in the reverse, and let queries attend to the zeros).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vitlab.layers.branch_attention import SequenceCompression, branch_attend
from vitlab.layers.dropout import Dropout


def padded_grid(grid: tuple[int, int], window: int) -> tuple[int, int]:
    """The grid rounded up to whole windows."""
    return math.ceil(grid[0] / window) * window, math.ceil(grid[1] / window) * window


def window_partition(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` in raster order -> windows ``(B * num_windows, window**2, C)``, the
    windows of one image consecutive and in raster order; zero-padded to whole windows."""
    B, N, C = x.shape
    H, W = grid
    Hp, Wp = padded_grid(grid, window)
    x = x.view(B, H, W, C)
    if (Hp, Wp) != (H, W):
        x = nn.functional.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    x = x.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * num_windows, window**2, C)`` -> ``(B, H*W, C)``,
    the padding cropped off."""
    H, W = grid
    Hp, Wp = padded_grid(grid, window)
    C = windows.shape[-1]
    x = windows.view(-1, Hp // window, Wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, Hp, Wp, C)[:, :H, :W]
    return x.reshape(-1, H * W, C)


def window_valid_mask(grid: tuple[int, int], window: int) -> torch.Tensor:
    """``(num_windows, window**2)``, True where a window position lies on the real grid."""
    valid = torch.ones(1, grid[0] * grid[1], 1, device="cpu")
    return window_partition(valid, grid, window)[..., 0].bool()


class WindowBankAttention(nn.Module):
    """Multi-head attention inside each window; every window also sees the bank's ``S`` tokens as
    extra keys/values (raw bank tokens split into heads, as the seed: docs/seeds/qavit.md).

    Args:
        grid: the token grid ``(H, W)`` the module is used on (fixes the padding mask).
        window_size: side of the square windows.
        compress_k: Linformer projection of each window's keys/values to ``compress_k`` rows; ``None``
            = none. The seed maps 49 -> 64, an expansion; with padding, the padded rows are
            zeroed before the projection since a mask cannot follow it.
        mask_padding: hide padded positions from the keys (off only for the seed's behaviour).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        window_size: int = 7,
        compress_k: int | None = None,
        mask_padding: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.grid, self.window_size = tuple(grid), window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.compress = SequenceCompression(window_size * window_size, compress_k) if compress_k else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        self.attn_drop = attn_drop
        self.use_flash = use_flash
        valid = window_valid_mask(self.grid, window_size)
        self.padded = mask_padding and not bool(valid.all())
        self.register_buffer("valid", valid, persistent=False)

    def forward(
        self, x: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, H*W, dim)``, bank ``(B, S, dim)`` -> output ``(B, H*W, dim)`` and, if asked, the
        weights ``(B, num_windows, heads, window**2, keys + S)``."""
        B, N, C = x.shape
        heads, hd = self.num_heads, self.head_dim
        windows = window_partition(x, self.grid, self.window_size)
        num_windows, L = windows.shape[0] // B, windows.shape[1]
        q, k, v = self.qkv(windows).view(-1, L, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)

        mask = None
        if self.padded:
            valid = self.valid.repeat(B, 1)[:, None, :, None]  # (B * windows, 1, L, 1)
        if self.compress is not None:
            if self.padded:
                k, v = k * valid, v * valid
            k, v = self.compress(k, v)
        elif self.padded:
            bank_keys = valid.new_ones(valid.shape[0], 1, 1, bank_k.shape[1])
            mask = torch.cat((valid.transpose(-2, -1), bank_keys), dim=-1)  # (B * windows, 1, 1, L + S)

        # Every window of an image sees that image's bank: the bank's heads (B, 1, heads, S, hd), broadcast
        # over the windows inside the concatenation, so the bank is copied once, into the result.
        def with_bank(t: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
            t = t.reshape(B, num_windows, heads, -1, hd)
            bank = bank.view(B, 1, -1, heads, hd).transpose(2, 3).to(t.dtype)
            return torch.cat((t, bank.expand(-1, num_windows, -1, -1, -1)), dim=3).flatten(0, 1)

        k, v = with_bank(k, bank_k), with_bank(v, bank_v)
        dropout_p = self.attn_drop if self.training else 0.0
        out, probs = branch_attend(
            q, k, v, dropout_p=dropout_p, need_weights=need_weights, attn_mask=mask, use_flash=self.use_flash
        )
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(-1, L, C)))
        out = window_reverse(out, self.grid, self.window_size)
        if probs is not None:
            probs = probs.view(B, num_windows, heads, L, -1)
        return out, probs
