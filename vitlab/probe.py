"""Linear probes on a trained network's frozen features: how linearly separable the classes are after
each block, the usual way to compare what ablation variants learned (``vitlab-evaluate ... probe=linear``).

Each map that ``forward_intermediates`` gives (one per block of a ViT, Mini-ViT or QAViT, one per
stage of OutGrid; prefix tokens left out) is averaged over its positions. A multinomial logistic
regression is fitted on those features of the training images seen through the eval transform
(standardised with their mean and spread; L-BFGS on the whole set, L2 weight ``l2``, at most
``max_iter`` iterations; no augmentation, no selection on the scored split), and scored on the
split ``vitlab-evaluate`` scores. A class-balanced prefix of either set is taken with ``limit_batches``
(the loaders' order interleaves the classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError

__all__ = ["ProbeResult", "block_names", "pooled_block_features", "fit_linear_probe", "linear_probes"]


@dataclass(frozen=True)
class ProbeResult:
    """One block's probe: its name, feature width, and top-1 on the fitting and the scored images."""

    block: str
    channels: int
    train_top1: float
    top1: float
    train_images: int
    images: int

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def block_names(net: nn.Module, count: int) -> list[str]:
    """The intermediates' module names (``feature_info``), else ``block<i>``."""
    info = getattr(net, "feature_info", None) or []
    names = [str(entry.get("module", "")) for entry in info if isinstance(entry, dict)]
    return names if len(names) == count and all(names) else [f"block{i}" for i in range(count)]


@torch.no_grad()
def pooled_block_features(net: nn.Module, loader: Any, device: torch.device,
                          limit_batches: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every intermediate map of ``net`` averaged over its positions, per image: ``([(N, C_i)], labels)``
    (float32 on the CPU)."""
    if not hasattr(net, "forward_intermediates"):
        raise ConfigError(f"probe: {type(net).__name__} has no forward_intermediates, which the probe reads")
    net.eval()
    features: list[list[torch.Tensor]] = []
    labels = []
    for i, (images, targets) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        maps = net.forward_intermediates(images.to(device), intermediates_only=True, output_fmt="NCHW")
        if not features:
            features = [[] for _ in maps]
        for kept, feature_map in zip(features, maps):
            kept.append(feature_map.float().mean(dim=(2, 3)).cpu())
        labels.append(targets.cpu())
    if not labels:
        raise ConfigError("probe: the loader gave no images to fit or score the probe on")
    return [torch.cat(kept) for kept in features], torch.cat(labels)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-4,
                     max_iter: int = 200) -> nn.Module:
    """A standardising linear classifier fitted by L-BFGS to minimise cross-entropy + ``l2`` * |W|^2."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(linear(x), labels) + l2 * linear.weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    if not torch.isfinite(linear.weight).all():
        raise ConfigError("probe: the linear probe did not converge (non-finite weights); the features may hold NaN")
    return _Standardised(mean, std, linear)


class _Standardised(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


def _top1(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (classifier(features).argmax(1) == labels).float().mean().item()


def linear_probes(net: nn.Module, fit_loader: Any, score_loader: Any, num_classes: int, device: torch.device,
                  limit_batches: int | None = None, l2: float = 1e-4, max_iter: int = 200) -> list[ProbeResult]:
    """One :class:`ProbeResult` per intermediate map of ``net``: fitted on ``fit_loader``'s images,
    scored on ``score_loader``'s."""
    train, train_labels = pooled_block_features(net, fit_loader, device, limit_batches)
    scored, labels = pooled_block_features(net, score_loader, device, limit_batches)
    results = []
    for name, x_fit, x_scored in zip(block_names(net, len(train)), train, scored):
        probe = fit_linear_probe(x_fit, train_labels, num_classes, l2, max_iter)
        results.append(ProbeResult(name, x_fit.shape[1], _top1(probe, x_fit, train_labels), _top1(probe, x_scored, labels),
                                   len(train_labels), len(labels)))
    return results
