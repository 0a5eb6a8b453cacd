"""Feed-forward with a depthwise 3x3 convolution on the token grid (QAViT's "CCF-FFN")."""

from __future__ import annotations

import torch
from torch import nn

from vitlab.layers.dropout import Dropout


class DepthwiseConvFFN(nn.Module):
    """``Linear(dim -> hidden) -> GELU -> depthwise 3x3 conv on the grid -> Linear(hidden -> dim) ->
    Dropout``, as the seed: no activation after the conv and no inner residual (docs/seeds/qavit.md step 7)."""

    def __init__(self, dim: int, hidden_dim: int, grid: tuple[int, int], drop: float = 0.0) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h = self.act(self.fc1(x))
        h = h.transpose(1, 2).reshape(B, -1, *self.grid)
        h = self.dwconv(h).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(h))
