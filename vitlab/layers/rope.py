"""2D rotary position embedding (RoPE) for patch tokens: fixed axial and learnable mixed frequencies.

Both follow Heo et al. 2024, "Rotary Position Embedding for Vision Transformer". A head's ``head_dim``
channels form ``head_dim / 2`` complex numbers from adjacent channels ``(2c, 2c + 1)`` (interleaved
convention); pair ``c`` of the token at column ``x`` and row ``y`` of the patch grid is multiplied by
``exp(i * phi_c)``, ``phi_c = x * f_x[c] + y * f_y[c]``. Rotating q and k this way makes every
patch-to-patch score depend on the 2-D offset between the two patches only. The first ``num_prefix``
tokens (CLS) have no position and pass unrotated.

* axial: ``f_x = (m_0 .. m_{P/2-1}, 0 .. 0)`` and ``f_y = (0 .. 0, m_0 .. m_{P/2-1})`` with
  ``m_k = theta ** (-4k / head_dim)``, ``P = head_dim / 2``: the first half of the pairs turns with
  the column, the second half with the row. Fixed (a buffer); ``theta`` 100 in Heo et al.
* mixed: one learnable ``(2, heads, P)`` table per layer. Initialised with the magnitudes ``m_k``
  (``theta`` 10) along a random direction ``alpha_h`` per head for pairs ``0 .. P/2-1`` and along
  ``alpha_h + pi/2`` for the rest: ``f_x = m cos(angle)``, ``f_y = m sin(angle)``.

Angles are computed and applied in float32, then cast back to the input dtype. Autocast leaves them
there: it recasts matrix products and convolutions, and every op here is element-wise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vitlab.layers.tracing import fx_leaf

__all__ = ["RoPE2D", "apply_rotary", "grid_positions", "rope_magnitudes"]


@fx_leaf
def grid_positions(grid_h: int, grid_w: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Column ``x`` and row ``y`` (float32, integer grid units) of the patches in raster order. A
    ``torch.fx`` leaf: the grid comes from the input's size, which a symbolic trace does not know."""
    t = torch.arange(grid_h * grid_w, device=device)
    return (t % grid_w).float(), torch.div(t, grid_w, rounding_mode="floor").float()


torch.fx.wrap("grid_positions")


def rope_magnitudes(head_dim: int, theta: float) -> torch.Tensor:
    """``m_k = theta ** (-4k / head_dim)`` for ``k = 0 .. head_dim / 4 - 1``."""
    return theta ** (-torch.arange(0, head_dim, 4, dtype=torch.float64)[: head_dim // 4] / head_dim)


def apply_rotary(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved channel pairs ``(a, b)`` of ``t`` (``(..., L, D)``) by ``angles``
    (broadcastable to ``(..., L, D / 2)``) in float32: ``(a cos - b sin, a sin + b cos)``, the complex
    product ``(a + ib) e^(i phi)`` in real arithmetic: ``torch.compile`` holds it in one graph, where
    the complex form's layout checks (strides, storage offset) broke the graph at every call. An angle
    of 0 leaves its pair exactly as it is."""
    pairs = t.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = angles.float().cos(), angles.float().sin()
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return rotated.to(t.dtype)


class RoPE2D(nn.Module):
    """Rotates q and k of shape ``(B, heads, N, head_dim)``; see the module docstring.

    Args:
        num_heads, head_dim: the attention's layout (``head_dim`` divisible by 4).
        kind: ``"axial"`` (fixed) or ``"mixed"`` (learnable ``freqs`` of shape ``(2, heads, head_dim/2)``).
        theta: base of the magnitudes; Heo et al. use 100 (axial) and 10 (mixed).
    """

    def __init__(self, num_heads: int, head_dim: int, kind: str = "mixed", theta: float = 10.0) -> None:
        super().__init__()
        if kind not in ("axial", "mixed"):
            raise ValueError(f"rope must be 'axial' or 'mixed', got {kind!r}")
        if head_dim % 4 != 0:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.theta = theta
        mag = rope_magnitudes(head_dim, theta)
        zeros = torch.zeros_like(mag)
        if kind == "axial":
            freqs = torch.stack((torch.cat((mag, zeros)), torch.cat((zeros, mag))))[:, None]  # (2, 1, P)
            # Derived from the config, so not saved in checkpoints.
            self.register_buffer("freqs", freqs.float(), persistent=False)
        else:
            self.freqs = nn.Parameter(torch.empty(2, num_heads, head_dim // 2))
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.kind != "mixed":
            return
        mag = rope_magnitudes(self.head_dim, self.theta)
        alpha = torch.rand(self.num_heads, 1, dtype=torch.float64) * 2 * math.pi
        angle = torch.cat((alpha.expand(-1, mag.numel()), (alpha + math.pi / 2).expand(-1, mag.numel())), dim=1)
        mag = torch.cat((mag, mag))
        self.freqs.copy_(torch.stack((mag * angle.cos(), mag * angle.sin())).float())

    def angles(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``phi`` of shape ``(heads or 1, L, head_dim / 2)`` for patch positions ``xs``, ``ys`` (``(L,)``)."""
        freqs = self.freqs.float()
        return xs.float()[None, :, None] * freqs[0][:, None, :] + ys.float()[None, :, None] * freqs[1][:, None, :]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        grid: tuple[int, int],
        num_prefix: int = 1,
        positions: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate the patch tokens of ``q`` and ``k``; ``positions`` (x, y) overrides the raster grid."""
        xs, ys = positions if positions is not None else grid_positions(grid[0], grid[1], device=q.device)
        phi = self.angles(xs, ys)
        if num_prefix:  # angle 0 for the CLS tokens: their q and k pass exactly unchanged
            phi = torch.cat((phi.new_zeros(phi.shape[0], num_prefix, phi.shape[2]), phi), dim=1)
        return apply_rotary(q, phi), apply_rotary(k, phi)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.num_heads}, head_dim={self.head_dim}, theta={self.theta}"
