"""QAViT's branch fusion: per-branch norm + compression, softmax-weighted concatenation."""

from __future__ import annotations

import torch
from torch import nn

from vitlab.inference import fold_affine_into_linear


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
        self.folded = False  # set by fuse_for_inference: the weights and the norms' affines live in projs

    def weights(self) -> torch.Tensor:
        return self.alpha.softmax(dim=0)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        z = [proj(norm(o)) for norm, proj, o in zip(self.norms, self.projs, branches)]
        if not self.folded:
            w = self.weights()
            z = [w[i] * zi for i, zi in enumerate(z)]
        return torch.cat(z, dim=-1)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Fold each branch's weight and its LayerNorm's affine into its projection, in place (for an
        inference copy): ``w (W (g * n + b) + c) = (w W diag(g)) n + w (W b + c)``, ``n`` the bare
        normalisation. ``alpha`` stays, for :meth:`weights`."""
        if self.folded:
            return
        w = self.weights()
        for i, (norm, proj) in enumerate(zip(self.norms, self.projs)):
            fold_affine_into_linear(proj, norm.weight, norm.bias)
            proj.weight.mul_(w[i])
            proj.bias.mul_(w[i])
            self.norms[i] = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        self.folded = True

