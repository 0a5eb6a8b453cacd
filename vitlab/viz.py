"""Pictures of attention maps: heat maps laid over the input images (``vitlab.analyze`` and the
attention-dump callback both draw them; neither imports the other)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from vitlab.layers.attention_maps import AttentionMap

_EPS = 1e-12


def overlay_heatmaps(maps: Mapping[str, AttentionMap]) -> dict[str, tuple[torch.Tensor, str]]:
    """``{name: ((B, h, w) heat map, what it shows)}`` for the maps that draw themselves over the input."""
    heat = {}
    for name, m in maps.items():
        if m.overlay:
            picture = m.detach().heatmap()
            if picture is not None:
                heat[name] = picture
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


