"""Pictures: attention maps as heat maps laid over the input images (``vitlab.analyze`` and the
attention-dump callback both draw them; neither imports the other), and the evaluation's confusion
matrix and grid of predictions (``vitlab.evaluate``). Matplotlib draws with its Agg backend (no display)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: the layers (timm, torchvision) load with the network
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


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 100) -> None:
    """``fig`` written to ``path`` (PNG by its suffix) and closed."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def overlay_figure(images: torch.Tensor, heat: torch.Tensor, title: str):
    """A matplotlib figure: the inputs on top, the heat map (upsampled, nearest) over them below."""
    plt = pyplot()
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




# Classes up to which every confusion-matrix cell shows its value, and every axis names its class.
CELL_TEXT_MAX_CLASSES = 20
TICK_LABEL_MAX_CLASSES = 100


def confusion_figure(matrix: torch.Tensor, class_names: list[str], title: str):
    """The confusion matrix (rows: true class, columns: predicted), each row normalised to the share
    of that class's images in %, the colour scale from 0 to the largest share (so that a weak model's
    confusions show too). Up to 20 classes each cell shows its percentage; up to 100 every row and
    column is named (smaller type as classes grow), beyond that every k-th."""
    plt = pyplot()
    counts = matrix.detach().double().cpu()
    rows = counts.sum(dim=1, keepdim=True)
    share = (100 * counts / rows.clamp_min(1)).numpy()
    n = share.shape[0]
    side = min(max(0.45 * n + 2.5, 5.0), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    top = max(float(share.max()), 1.0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=top, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02, label="% of the true class's images")
    if n <= CELL_TEXT_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                value = share[i, j]
                if value >= 0.5 or i == j:
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8 if n <= 12 else 6.5,
                            color="white" if value > 0.55 * top else "black")
    step = max(1, -(-n // TICK_LABEL_MAX_CLASSES))
    ticks = list(range(0, n, step))
    names = [_short(class_names[t]) for t in ticks]
    fontsize = 9 if n <= 12 else 7 if n <= 40 else 6 if n <= 70 else 5.5
    ax.set_xticks(ticks, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    fig.tight_layout()
    return fig


def predictions_figure(images: torch.Tensor, true: list[int], predicted: list[int], class_names: list[str],
                       title: str, columns: int = 8):
    """A grid of (de-normalised, [0, 1]) images, each titled with its predicted class and, under it,
    the true one; a wrong prediction is written in red and framed in red, a right one in green."""
    plt = pyplot()
    n = images.shape[0]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(1.4 * columns, 4.0), 1.6 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        right = predicted[i] == true[i]
        color = "tab:green" if right else "tab:red"
        mark = "" if right else "✗ "
        ax.set_title(f"{mark}{_short(class_names[predicted[i]], 14)}\n(true: {_short(class_names[true[i]], 12)})",
                     fontsize=7, color=color)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if right else 3)
    fig.suptitle(textwrap.fill(title, max(50, 18 * columns)), fontsize=9)
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 18) -> str:
    """A class name cut to ``width`` characters (an ellipsis marks the cut)."""
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "…"
