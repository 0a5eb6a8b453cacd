"""MBConv: inverted residual with depthwise conv and squeeze-excitation (stride 1, post-norm)."""

from __future__ import annotations

import torch
from timm.layers import SEModule
from torch import nn


class MBConv(nn.Module):
    """``x + BN(1x1(SE(SiLU(BN(dw3x3(SiLU(BN(1x1(x)))))))))``; no drop-path on this residual."""

    def __init__(self, dim: int, expand_ratio: float = 4.0, se_ratio: float = 0.25):
        super().__init__()
        # The residual add runs in place on the projection's output, which BatchNorm's backward does
        # not read: one feature-map allocation fewer (on the CPU a fresh large tensor costs its page
        # faults, more than the add). The SiLUs stay out of place: autograd would clone their input.
        hidden = round(dim * expand_ratio)
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
        )
        # The SE bottleneck is a fraction of the expanded width.
        self.se = SEModule(hidden, rd_channels=round(hidden * se_ratio), act_layer=nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.depthwise(self.expand(x)))).add_(x)
