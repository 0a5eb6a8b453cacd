"""Conditional positional encoding: CPVT's position-encoding generator (PEG), Chu et al. 2021.

A depthwise ``k x k`` convolution (groups = channels, with bias, zero padding ``k // 2``) over the
patch tokens laid out on their grid; its output is added to the patch tokens only. CLS tokens pass
through unchanged (the seed's wrapper returned ``2 * CLS``). With ``zero_init`` the
module starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PEG"]


class PEG(nn.Module):
    """``patches + dwconv(patches)`` on ``(B, num_prefix + H*W, dim)`` tokens; prefix tokens untouched."""

    def __init__(self, dim: int, kernel_size: int = 3, zero_init: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cpe_kernel_size must be odd, got {kernel_size}")
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=True)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
        B, N, C = x.shape
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        fmap = patches.transpose(1, 2).reshape(B, C, *grid)
        patches = patches + self.proj(fmap).flatten(2).transpose(1, 2)
        return torch.cat((prefix, patches), dim=1)
