"""QAViT's branch fusion: per-branch norm + compression, softmax-weighted concatenation."""

from __future__ import annotations

import torch
from torch import nn


class HybridFusion(nn.Module):
    """``[w_1 z_1 | ... | w_n z_n]`` with ``z_i = Linear(dim -> out_dim)(LN_i(o_i))`` and
    ``w = softmax(alpha)``, ``alpha`` initialised to ones (equal weights).

    A scalar per branch in front of a linear layer is redundant (the next layer can absorb any
    scale:); it is kept for fidelity, and :meth:`weights` lets training log whether it moves.
    """

    def __init__(self, dim: int, out_dim: int, num_branches: int = 4) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_branches))
        self.projs = nn.ModuleList(nn.Linear(dim, out_dim) for _ in range(num_branches))
        self.alpha = nn.Parameter(torch.ones(num_branches))

    def weights(self) -> torch.Tensor:
        return self.alpha.softmax(dim=0)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return torch.cat(
            [w[i] * proj(norm(o)) for i, (norm, proj, o) in enumerate(zip(self.norms, self.projs, branches))], dim=-1
        )
