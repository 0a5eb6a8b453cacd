"""Fixed positional encodings."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Interleaved sin/cos code: channel ``2i`` is ``sin(p * w_i)``, ``2i + 1`` is ``cos(p * w_i)``,
    with ``w_i = temperature ** (-2i / dim)``. Returns ``(len(positions), dim)``."""
    if dim % 2 != 0:
        raise ValueError(f"sin-cos code needs an even dim, got {dim}")
    omega = temperature ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1).float()


def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2D sin-cos table for a ``grid_h x grid_w`` patch grid in raster order (row-major).

    The first ``dim / 2`` channels encode the column x, the last ``dim / 2`` the row y, each with
    :func:`sincos_1d` at integer positions. Returns ``(grid_h * grid_w, dim)``.
    """
    if dim % 4 != 0:
        raise ValueError(f"2D sin-cos code needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    half = dim // 2
    return torch.cat((sincos_1d(xs.flatten(), half, temperature), sincos_1d(ys.flatten(), half, temperature)), dim=1)
