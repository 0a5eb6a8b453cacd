"""Pictures of attention maps: heat maps laid over the input images (``vitlab.analyze`` and the
attention-dump callback both draw them; neither imports the other)."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError

_EPS = 1e-12


def map_kind(name: str, m: torch.Tensor) -> str | None:
    """``kernel``, ``grid``, ``tokens``, ``cls`` (a spatial CLS-to-patch map) or None (not understood)."""
    if m.dim() == 5:
        return "kernel" if name.endswith("kernel") else "grid"
    if m.dim() == 4:
        if name.endswith(".cls"):
            return "cls"
        if m.shape[-1] == m.shape[-2]:
            return "tokens"
    return None


def prefix_tokens(net: Any, num_tokens: int) -> int:
    """Leading non-patch tokens of a token map: the network's own count, else what is left over a square."""
    for attr in ("num_prefix_tokens", "num_cls_tokens"):
        value = getattr(net, attr, None)
        if isinstance(value, int) and 0 <= value < num_tokens and math.isqrt(num_tokens - value) ** 2 == num_tokens - value:
            return value
    return num_tokens - math.isqrt(num_tokens) ** 2


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ConfigError(f"attention map {what}: {count} tokens do not form a square grid; vitlab.analyze reads square maps only")
    return side


def measured_maps(maps: Mapping[str, torch.Tensor]) -> list[str]:
    """The names :func:`measure_map` is asked about: differential maps give way to their softmax maps."""
    return [n for n in maps if not n.endswith(".cls") and f"{n}.softmax1" not in maps]


def overlay_heatmaps(maps: Mapping[str, torch.Tensor], num_images: int, net: Any = None) -> dict[str, tuple[torch.Tensor, str]]:
    """``{name: ((B, h, w) heat map, what it shows)}`` for the maps that can be laid over the input."""
    heat: dict[str, tuple[torch.Tensor, str]] = {}
    for name, m in maps.items():
        kind = map_kind(name, m)
        m = m.detach().float().cpu()
        if kind == "kernel":
            heat[name] = (m[:, :, m.shape[2] // 2].mean(1), "centre-tap weight of the dynamic kernel (head mean)")
        elif kind == "grid":
            B, groups, heads, N, _ = m.shape
            g, side = _square_side(groups, name), _square_side(N, name)
            y = x = side * g // 2  # the query at the feature-map centre
            group, query = (y % g) * g + (x % g), (y // g) * side + (x // g)
            row = m[:, group, :, query].mean(1).view(B, side, side)  # its keys, every g pixels
            heat[name] = (row, "grid attention of the centre query (head mean), keys spread over their g x g cells")
        elif kind == "cls":
            heat[name] = (m.mean(1), "CLS attention to the patches (head mean)")
        elif kind == "tokens" and m.shape[0] == num_images and f"{re.sub(r'[.]softmax[12]$', '', name)}.cls" not in maps \
                and name in measured_maps(maps):  # a block with a CLS map is shown by that map
            N = m.shape[-1]
            prefix = prefix_tokens(net, N)
            side = _square_side(N - prefix, name)
            query = 0 if prefix else prefix + (side // 2) * side + side // 2
            row = m[:, :, query, prefix:].mean(1)
            what = "CLS token" if prefix else "centre token"
            heat[name] = (row.view(num_images, side, side), f"attention of the {what} to the patches (head mean)")
    return heat


def denormalise(images: torch.Tensor, mean: Any = None, std: Any = None) -> torch.Tensor:
    """Images back to [0, 1] for display: with the data's mean/std, else min-max per image."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        images = images * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    else:
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - lo) / (hi - lo).clamp_min(_EPS)
    return images.clamp(0, 1)


def overlay_figure(images: torch.Tensor, heat: torch.Tensor, title: str):
    """A matplotlib figure: the inputs on top, the heat map (upsampled, nearest) over them below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    size = images.shape[-2:]
    up = F.interpolate(heat[:, None], size=size, mode="nearest")[:, 0]
    fig, axes = plt.subplots(2, n, figsize=(max(1.8 * n, 5.0), 3.9), squeeze=False)
    for i in range(n):
        picture = images[i].permute(1, 2, 0).numpy()
        axes[0, i].imshow(picture)
        axes[1, i].imshow(picture)
        axes[1, i].imshow(up[i].numpy(), cmap="jet", alpha=0.5)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(textwrap.fill(title, 70), fontsize=8)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> Any:
    """RGB uint8 pixels ``(H, W, 3)`` of a drawn figure (for TensorBoard)."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


