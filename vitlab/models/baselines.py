"""timm baselines adapted to 32x32 inputs, as in the OutGridViT seed's comparison table.

Each entrypoint builds a timm model from scratch (no pretrained weights: nothing is downloaded)
and applies the seed's changes for small images (docs/seeds/outgrid.md). Two models were
broken by those changes, and default to a corrected build here; ``faithful=True`` gives the seed's:

* Swin-Tiny/2: the seed built Swin for patch 4 (an 8x8 token grid) and then swapped in a 2x2
  patch conv, so 16x16 tokens run through blocks whose window shift masks were made for 8x8.
  Corrected: built with patch size 2 from the start, so every mask matches its map.
* MaxViT: timm sets window = grid = img_size // 32, i.e. 1x1 partitions at 32 px, so no token
  attends to any other. Corrected: 2x2 windows and grids (the largest size that divides every
  stage's map, 16/8/4/2 after the stride-1 stem).
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from vitlab.models._registry import register_model

__all__ = ["TimmCifarConfig", "timm_attention_maps", "timm_attention_modules"]


@dataclass(frozen=True)
class TimmCifarConfig:
    """A timm network built from scratch for small images. ``img_size`` is used by the models whose
    token grid depends on it (DeiT, Swin, MaxViT); the convolutional ones ignore it."""

    num_classes: int = 100
    img_size: int = 32
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    #: Swin and MaxViT only: the seed's build, which barely attends at 32 px (module docstring).
    faithful: bool = False


def _create(name: str, cfg: TimmCifarConfig, **kwargs) -> nn.Module:
    return timm.create_model(
        name, pretrained=False, num_classes=cfg.num_classes, drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate, **kwargs
    )


def _no_faithful(name: str, cfg: TimmCifarConfig) -> None:
    if cfg.faithful:
        raise ValueError(f"faithful=true exists for the Swin and MaxViT baselines only, not {name}")


def _cifar_resnet(name: str, cfg: TimmCifarConfig) -> nn.Module:
    _no_faithful(name, cfg)
    model = _create(name, cfg)
    # 3x3 stride-1 stem and no max-pool: the 32x32 input is not downsampled before stage 1.
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_deit_tiny(cfg: TimmCifarConfig) -> nn.Module:
    """DeiT-Tiny with 4x4 patches (8x8 tokens + CLS at 32 px)."""
    _no_faithful("deit_tiny", cfg)
    return _create("deit_tiny_patch16_224", cfg, img_size=cfg.img_size, patch_size=4)


def build_deit_small(cfg: TimmCifarConfig) -> nn.Module:
    """DeiT-Small with 4x4 patches."""
    _no_faithful("deit_small", cfg)
    return _create("deit_small_patch16_224", cfg, img_size=cfg.img_size, patch_size=4)


def build_swin_tiny(cfg: TimmCifarConfig) -> nn.Module:
    """Swin-Tiny with 2x2 patches and 4x4 windows."""
    name = "swin_tiny_patch4_window7_224"
    if not cfg.faithful:
        return _create(name, cfg, img_size=cfg.img_size, patch_size=2, window_size=4)
    model = _create(name, cfg, img_size=cfg.img_size, window_size=4)
    model.patch_embed.proj = nn.Conv2d(3, 96, 2, stride=2)
    model.patch_embed.patch_size = (2, 2)
    return model


def _maxvit(cfg: TimmCifarConfig, **kwargs) -> nn.Module:
    if not cfg.faithful:
        kwargs.update(transformer_window_size=(2, 2), transformer_grid_size=(2, 2))
    return _create("maxvit_tiny_tf_224", cfg, img_size=cfg.img_size, **kwargs)


def build_maxvit_tiny(cfg: TimmCifarConfig) -> nn.Module:
    """MaxViT-Tiny with a stride-1 stem (both stem convs 3x3 stride 1)."""
    model = _maxvit(cfg)
    model.stem.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.stem.conv2 = nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)
    return model


def build_maxvit_nano(cfg: TimmCifarConfig) -> nn.Module:
    """The seed's "MaxViT-Nano": MaxViT-Tiny with widths 64/96/192/384 and a stride-1 stem whose
    norm is a plain BatchNorm (the seed's surgery drops the stem activation, kept as it trained)."""
    model = _maxvit(cfg, embed_dim=(64, 96, 192, 384))
    model.stem.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1)
    model.stem.norm1 = nn.BatchNorm2d(64, eps=1e-3)
    model.stem.conv2 = nn.Conv2d(64, 64, 3, stride=1, padding=1)
    return model


def build_resnet18(cfg: TimmCifarConfig) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    return _cifar_resnet("resnet18", cfg)


def build_resnet50(cfg: TimmCifarConfig) -> nn.Module:
    """ResNet-50 with the CIFAR stem."""
    return _cifar_resnet("resnet50", cfg)


def build_convnext_tiny(cfg: TimmCifarConfig) -> nn.Module:
    """ConvNeXt-Tiny with a 2x2 stride-2 stem instead of 4x4 stride 4."""
    _no_faithful("convnext_tiny", cfg)
    model = _create("convnext_tiny", cfg)
    model.stem[0] = nn.Conv2d(3, 96, 2, stride=2)
    return model


def build_efficientnetv2_s(cfg: TimmCifarConfig) -> nn.Module:
    """EfficientNetV2-S with a 3x3 stride-1 stem."""
    _no_faithful("efficientnetv2_s", cfg)
    model = _create("efficientnetv2_s", cfg)
    model.conv_stem = nn.Conv2d(3, model.conv_stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


# The seed's comparison table (CIFAR-100, 32 px): one config, one builder (its surgery) per network.
for _name, _builder in dict(
    deit_tiny=build_deit_tiny, deit_small=build_deit_small, swin_tiny=build_swin_tiny,
    maxvit_tiny=build_maxvit_tiny, maxvit_nano=build_maxvit_nano, resnet18=build_resnet18,
    resnet50=build_resnet50, convnext_tiny=build_convnext_tiny, efficientnetv2_s=build_efficientnetv2_s,
).items():
    # The seed's comparison trains them with OutGrid's recipe.
    register_model(_name, TimmCifarConfig(), _builder, module="vitlab.families.BaselineClassifier", recipe="outgrid")


def timm_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """timm's attention modules: those with a ``fused_attn`` switch and an ``attn_drop`` layer that
    receives the softmax probabilities on the non-fused path."""
    return {
        name: m
        for name, m in model.named_modules()
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    }


@torch.no_grad()
def timm_attention_maps(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Post-softmax attention of every timm attention module, ``{module name: (B*, heads, N, N)}``.

    Fused SDPA never forms the probabilities, so the modules run their explicit path for this one
    forward (switched back afterwards) while a hook reads what enters their ``attn_drop``."""
    modules = timm_attention_modules(model)
    maps: dict[str, torch.Tensor] = {}
    fused = {name: m.fused_attn for name, m in modules.items()}
    hooks = [
        m.attn_drop.register_forward_hook(lambda _m, args, _out, name=name: maps.__setitem__(name, args[0]))
        for name, m in modules.items()
    ]
    try:
        for m in modules.values():
            m.fused_attn = False
        model(images)
    finally:
        for name, m in modules.items():
            m.fused_attn = fused[name]
        for hook in hooks:
            hook.remove()
    return maps
