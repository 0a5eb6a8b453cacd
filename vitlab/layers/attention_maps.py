"""Attention maps that say how they are laid out.

A network's ``attention_maps(images)`` returns ``{name: AttentionMap}``. The map carries its weights
and what their axes are (``layout``, prefix tokens, the query grid, the axis the weights sum to 1
over), and it answers the questions analysis asks, so ``vitlab.analyze``, the attention-dump callback
and the softmax-sum check read these objects, never a map's name or its tensor's rank:

* :meth:`AttentionMap.locality_rows`: the weights as rows over spatial keys, ``(B, heads, G, Q, K)``
  (``G`` windows or groups), with the query-key distances ``(Q, K)`` and which queries are on the
  border: what the mean attention distance and the entropy are computed from;
* :meth:`AttentionMap.heatmap`: a ``(B, h, w)`` picture to lay over the input;
* :meth:`AttentionMap.normalisation_error`: the largest deviation from 1 of the sums over ``dim``.

A new layout is a subclass that implements the first two (a family can define it next to its
network); the base class is a map that is only checked for normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AttentionMap", "CLSMap", "GridMap", "KernelMap", "LocalityRows", "TokenMap", "grid_positions_2d"]


def grid_positions_2d(h: int, w: int) -> torch.Tensor:
    """(row, column) of every cell of an ``h x w`` grid in raster order, ``(h*w, 2)`` float."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).float()


def interior(h: int, w: int) -> torch.Tensor:
    """Cells of an ``h x w`` grid off its 1-cell border (all of them when there is no interior)."""
    if h < 3 or w < 3:
        return torch.ones(h * w, dtype=torch.bool)
    pos = grid_positions_2d(h, w)
    return (pos[:, 0] > 0) & (pos[:, 0] < h - 1) & (pos[:, 1] > 0) & (pos[:, 1] < w - 1)


@dataclass
class LocalityRows:
    """What a locality measure needs: ``probs (B, heads, G, Q, K)`` rows of weights over spatial
    keys, ``dist (Q, K)`` query-key distances in ``unit``, ``border (Q,)`` True for border queries."""

    probs: torch.Tensor
    dist: torch.Tensor
    border: torch.Tensor
    unit: str
    kind: str


@dataclass
class AttentionMap:
    """Attention weights and their layout.

    Args:
        weights: the tensor (layout-specific shape; batch first).
        layout: what the axes are: ``tokens``, ``grid``, ``kernel``, ``cls`` or a family's own.
        grid: ``(h, w)`` of the query positions.
        prefix_tokens: leading non-spatial tokens (CLS, registers) on the query and key axes.
        dim: the axis the weights are a distribution over; None when they are not one (a
            differential map ``A1 - lambda A2``, a part of a row).
        measure: whether analysis measures its locality (False for a map that is shown only, or
            whose components are measured instead).
        overlay: whether the attention dump draws it.
    """

    weights: torch.Tensor
    layout: str = "other"
    grid: tuple[int, int] = (0, 0)
    prefix_tokens: int = 0
    dim: int | None = -1
    measure: bool = True
    overlay: bool = True

    def normalisation_error(self) -> torch.Tensor | None:
        """Largest ``|sum over dim - 1|``; None for maps that are not a distribution."""
        if self.dim is None:
            return None
        return (self.weights.float().sum(self.dim) - 1).abs().max()

    def locality_rows(self, num_images: int) -> LocalityRows | None:
        """The map as rows over spatial keys (module docstring); None: not measurable."""
        return None

    def heatmap(self) -> tuple[torch.Tensor, str] | None:
        """``((B, h, w) picture, what it shows)`` to lay over the input, or None."""
        return None

    def detach(self) -> AttentionMap:
        """The same map with its weights as float32 on the CPU (for saving and drawing)."""
        return type(self)(**{**vars(self), "weights": self.weights.detach().float().cpu()})

    def describe(self) -> dict:
        """The metadata as plain values (saved beside the tensors)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k != "weights"}


@dataclass
class TokenMap(AttentionMap):
    """Token-to-token attention ``(B * windows, heads, N, N)``: ``prefix_tokens`` first, then the
    ``grid`` in raster order (a window's own grid when windows > 1). Distances: Euclidean, in patches."""

    layout: str = "tokens"

    def _spatial(self) -> torch.Tensor:
        p = self.prefix_tokens
        return self.weights[:, :, p:, p:]

    def locality_rows(self, num_images: int) -> LocalityRows | None:
        lead, heads, N, K = self.weights.shape
        h, w = self.grid
        if lead % num_images or N != K or N - self.prefix_tokens != h * w:
            return None
        windows = lead // num_images
        probs = self._spatial().reshape(num_images, windows, heads, h * w, h * w).transpose(1, 2)
        pos = grid_positions_2d(h, w)
        unit = "patches (Euclidean)" if windows == 1 else "tokens of the window (Euclidean)"
        return LocalityRows(probs, torch.cdist(pos, pos, p=2), ~interior(h, w), unit,
                            "tokens" if windows == 1 else "windowed tokens")

    def heatmap(self) -> tuple[torch.Tensor, str] | None:
        B, heads, N, _ = self.weights.shape
        h, w = self.grid
        if N - self.prefix_tokens != h * w:
            return None  # windows: no single picture of the image
        p = self.prefix_tokens
        query = 0 if p else (h // 2) * w + w // 2
        row = self.weights[:, :, query, p:].float().mean(1)
        what = "CLS token" if p else "centre token"
        return row.reshape(B, h, w), f"attention of the {what} to the patches (head mean)"


@dataclass
class CLSMap(AttentionMap):
    """The CLS query's weights on the patches, ``(B, heads, h, w)``: a part of a row (not normalised)."""

    layout: str = "cls"
    dim: int | None = None
    measure: bool = False

    def heatmap(self) -> tuple[torch.Tensor, str] | None:
        return self.weights.float().mean(1), "CLS attention to the patches (head mean)"


@dataclass
class GridMap(AttentionMap):
    """Grid attention ``(B, g*g, heads, N, N)``: ``g*g`` groups of ``N = grid`` tokens that sit
    ``stride = g`` feature-map pixels apart. Distances: Manhattan, in feature-map pixels."""

    layout: str = "grid"
    stride: int = 1

    def locality_rows(self, num_images: int) -> LocalityRows | None:
        h, w = self.grid
        pos = grid_positions_2d(h, w)
        dist = self.stride * torch.cdist(pos, pos, p=1)
        return LocalityRows(self.weights.transpose(1, 2), dist, ~interior(h, w), "feature-map px (Manhattan)", "grid")

    def heatmap(self) -> tuple[torch.Tensor, str] | None:
        B, groups, heads, N, _ = self.weights.shape
        g, (h, w) = self.stride, self.grid
        y, x = h * g // 2, w * g // 2  # the query at the feature-map centre
        group, query = (y % g) * g + (x % g), (y // g) * w + (x // g)
        row = self.weights[:, group, :, query].float().mean(1).view(B, h, w)  # its keys, every g pixels
        return row, "grid attention of the centre query (head mean), keys spread over their g x g cells"


@dataclass
class KernelMap(AttentionMap):
    """Dynamic-kernel weights ``(B, heads, k*k, H, W)``: per pixel a softmax over the ``k x k`` taps
    (``dim=2``, row-major, centre ``k*k // 2``). Distance of a tap: Manhattan from the centre."""

    layout: str = "kernel"
    dim: int | None = 2

    def locality_rows(self, num_images: int) -> LocalityRows | None:
        B, heads, taps, H, W = self.weights.shape
        k = math.isqrt(taps)
        centre = torch.tensor([(k - 1) / 2, (k - 1) / 2])
        tap_dist = (grid_positions_2d(k, k) - centre).abs().sum(1)
        probs = self.weights.permute(0, 1, 3, 4, 2).reshape(B, heads, 1, H * W, taps)
        return LocalityRows(probs, tap_dist.expand(H * W, taps), ~interior(H, W),
                            "feature-map px (Manhattan, in the kernel)", "kernel")

    def heatmap(self) -> tuple[torch.Tensor, str] | None:
        m = self.weights.float()
        return m[:, :, m.shape[2] // 2].mean(1), "centre-tap weight of the dynamic kernel (head mean)"
