"""OutGridViT: dynamic 3x3 kernels -> MBConv -> grid attention -> MLP, in four stages.

Re-implementation of github.com/pablo-reyes8/outgrid-vision-transformer following vitlab's spec
``docs/seeds/outgrid.md`` (parameter counts verified against every size the seed logs).

Model A puts a dynamic-kernel sub-block at the start of every block. Model B runs ``front_depth``
dynamic-kernel blocks once, at stage-0 width, and its stage blocks are MBConv + grid attention + MLP
only. Both keep the input resolution in stage 0 (3x3 stride-1 stem) and halve it between stages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.inference import fold_affine_into_linear
from vitlab.layers.attention_maps import AttentionMap, GridMap, KernelMap
from vitlab.layers.dynamic_kernel import DynamicKernelBlock
from vitlab.layers.grid_attention import GridAttentionBlock
from vitlab.layers.mbconv import MBConv
from vitlab.models._contract import ClassifierContract
from vitlab.models._registry import build_from_config, config_dataclass, register_model

__all__ = ["OutGridConfig", "OutGridViT", "model_cfgs"]


class MlpBlock(nn.Module):
    """``x + drop_path(MLP(LN(x)))`` on channels-last maps."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.mlp(self.norm(x))).add_(x)  # in place on the fresh branch output


class OutGridBlock(nn.Module):
    """[dynamic kernel] -> MBConv -> grid attention -> MLP on ``(B, C, H, W)``. The block's drop-path
    rate applies to the kernel, kernel-MLP, grid-attention and MLP residuals, not to MBConv's."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: int,
        outlook_heads: int,
        with_kernel: bool = True,
        kernel_size: int = 3,
        outlook_mlp_ratio: float = 2.0,
        mbconv_expand_ratio: float = 4.0,
        mbconv_se_ratio: float = 0.25,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.kernel = (
            DynamicKernelBlock(dim, outlook_heads, kernel_size, outlook_mlp_ratio, drop, attn_drop, drop_path)
            if with_kernel
            else None
        )
        self.mbconv = MBConv(dim, mbconv_expand_ratio, mbconv_se_ratio)
        self.grid = GridAttentionBlock(dim, num_heads, grid_size, attn_drop, drop, drop_path)
        self.mlp = MlpBlock(dim, mlp_ratio, drop, drop_path)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps = {}
        if self.kernel is not None:
            x, maps["kernel"] = self.kernel(x, need_weights)
        x = self.mbconv(x).permute(0, 2, 3, 1)
        x, maps["grid"] = self.grid(x, need_weights)
        x = self.mlp(x).permute(0, 3, 1, 2)
        return x, maps if need_weights else {}


def _conv_bn_act(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_chs), nn.SiLU()
    )


class OutGridStage(nn.Module):
    """An optional stride-2 conv downsample, then the stage's blocks."""

    def __init__(self, in_dim: int, dim: int, blocks: Sequence[nn.Module], downsample: bool):
        super().__init__()
        self.downsample = _conv_bn_act(in_dim, dim, stride=2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(blocks)


class OutGridViT(ClassifierContract, nn.Module):
    """OutGridViT Model A (``front_depth=0``, ``kernel_in_blocks=True``) or Model B
    (``front_depth > 0``, ``kernel_in_blocks=False``). Per-stage settings are sequences of one
    value per stage."""

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        num_classes: int = 100,
        stem_dim: int = 64,
        dims: Sequence[int] = (48, 96, 192, 256),
        depths: Sequence[int] = (1, 2, 3, 1),
        num_heads: Sequence[int] = (2, 3, 6, 8),
        grid_sizes: Sequence[int] = (8, 8, 4, 2),
        outlook_heads: Sequence[int] = (2, 3, 6, 8),
        kernel_size: int = 3,
        outlook_mlp_ratio: float = 2.0,
        mbconv_expand_ratio: float = 4.0,
        mbconv_se_ratio: float = 0.25,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        front_depth: int = 0,
        kernel_in_blocks: bool = True,
    ):
        super().__init__()
        num_stages = len(dims)
        self._check(img_size, dims, depths, num_heads, grid_sizes, outlook_heads, kernel_size)
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.dims = tuple(dims)
        self.img_size = img_size
        self.num_prefix_tokens = 0  # feature maps, no token sequence
        self.grad_checkpointing = False

        self.stem = _conv_bn_act(in_chans, stem_dim, stride=1)
        self.proj_in = nn.Conv2d(stem_dim, dims[0], 1) if stem_dim != dims[0] else nn.Identity()
        total = front_depth + sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else drop_path_rate for i in range(total)]
        kernel_args = dict(kernel_size=kernel_size, mlp_ratio=outlook_mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate)
        self.front = nn.ModuleList(
            DynamicKernelBlock(dims[0], outlook_heads[0], drop_path=rates[i], **kernel_args) for i in range(front_depth)
        )
        stages, index, in_dim = [], front_depth, dims[0]
        for s in range(num_stages):
            blocks = []
            for _ in range(depths[s]):
                blocks.append(
                    OutGridBlock(
                        dims[s],
                        num_heads[s],
                        grid_sizes[s],
                        outlook_heads[s],
                        with_kernel=kernel_in_blocks,
                        kernel_size=kernel_size,
                        outlook_mlp_ratio=outlook_mlp_ratio,
                        mbconv_expand_ratio=mbconv_expand_ratio,
                        mbconv_se_ratio=mbconv_se_ratio,
                        mlp_ratio=mlp_ratio,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=rates[index],
                    )
                )
                index += 1
            stages.append(OutGridStage(in_dim, dims[s], blocks, downsample=s > 0))
            in_dim = dims[s]
        self.stages = nn.ModuleList(stages)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _check(img_size, dims, depths, num_heads, grid_sizes, outlook_heads, kernel_size) -> None:
        """One line for each size that cannot work, before anything is built."""
        num_stages = len(dims)
        for key, values in (("depths", depths), ("num_heads", num_heads), ("grid_sizes", grid_sizes), ("outlook_heads", outlook_heads)):
            if len(values) != num_stages:
                raise ValueError(f"{key} has {len(values)} entries but dims has {num_stages}: give one per stage")
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size} must be odd (the kernel is centred on its pixel)")
        for s in range(num_stages):
            side = img_size // 2**s
            if img_size % 2**s or side % grid_sizes[s]:
                raise ValueError(
                    f"grid_sizes[{s}]={grid_sizes[s]} does not divide stage {s}'s {side}x{side} feature map "
                    f"(img_size {img_size}); pick a divisor of {side}"
                )
            if dims[s] % num_heads[s]:
                raise ValueError(f"num_heads[{s}]={num_heads[s]} does not divide dims[{s}]={dims[s]}")
            if dims[s] % outlook_heads[s]:
                raise ValueError(f"outlook_heads[{s}]={outlook_heads[s]} does not divide dims[{s}]={dims[s]}")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # Nothing named: biases and norm weights are 1-D and left undecayed by the optimizer factory.
        return set()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last memory throughout: the convolutions run faster in it on CPU and GPU, and the
        # blocks' NCHW <-> BHWC permutes become free views instead of copies.
        return self.proj_in(self.stem(x.contiguous(memory_format=torch.channels_last)))

    def _forward(self, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps: dict[str, torch.Tensor] = {}
        x = self._stem(x)
        remat = self.grad_checkpointing and self.training and not need_weights
        for i, block in enumerate(self.front):
            x, weights = checkpoint(block, x, False, use_reentrant=False) if remat else block(x, need_weights)
            if need_weights:
                maps[f"front.{i}.kernel"] = weights
        for s, stage in enumerate(self.stages):
            x = stage.downsample(x)
            for b, block in enumerate(stage.blocks):
                x, block_maps = checkpoint(block, x, False, use_reentrant=False) if remat else block(x, need_weights)
                maps.update({f"stages.{s}.blocks.{b}.{kind}": m for kind, m in block_maps.items()})
        return self.norm(x), maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the normalised last-stage map ``(B, dims[-1], H/8, W/8)``."""
        return self._forward(x, need_weights=False)[0]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``avg``: the mean of the last stage's map; ``""``: the map itself ``(B, C, H, W)``."""
        return x.mean(dim=(2, 3)) if self.global_pool == "avg" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ----------------------------------------------------------------------------- timm's model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: the stem with Model B's front blocks (they
        run at the stem's resolution before any stage), then one group per stage (``coarse``) or per
        stage downsample and block, the final norm last; the head is timm's last group."""
        stages = [(r"^stages\.(\d+)", None)] if coarse else [
            (r"^stages\.(\d+)\.downsample", (-1,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        return dict(stem=r"^stem|^proj_in|^front", blocks=[*stages, (r"^norm", (99999,))])

    head_pools = ("avg", "")  # the mean-pooled last stage, or its map
    global_pool = "avg"
    head_on_tokens = False
    norm_fits_every_tap = False  # the final BatchNorm is the last stage's

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The stem's map (with Model B's front blocks, which run at its resolution), then every stage's,
        as timm's MaxxVit lists them."""
        stem = f"front.{len(self.front) - 1}" if len(self.front) else "proj_in"
        return [dict(num_chs=self.dims[0], reduction=1, module=stem)] + [
            dict(num_chs=self.dims[s], reduction=2**s, module=f"stages.{s}") for s in range(len(self.stages))]

    def _feature_taps(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        remat = self.grad_checkpointing and self.training
        x = self._stem(x)
        for block in self.front:
            x, _ = checkpoint(block, x, False, use_reentrant=False) if remat else block(x)
        yield x
        for stage in self.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                x, _ = checkpoint(block, x, False, use_reentrant=False) if remat else block(x)
            yield x

    def _keep_taps(self, n: int) -> None:
        self.stages = self.stages[: n - 1]  # tap 0 is the stem's

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Fold what :func:`vitlab.inference.prepare_for_inference` cannot see, in place, on an eval
        copy: the last BatchNorm into the head. In eval it is a per-channel affine map and the mean
        pool is linear, so ``head(mean(BN(x))) == head'(mean(x))`` with the scale on the head's input
        columns and the shift in its bias. Afterwards ``forward_features`` returns the map before that
        norm; the logits are unchanged. A network without a head (``num_classes=0``) keeps its norm,
        since there its pooled features are the output.

        The SiLUs then run in place: without autograd nothing reads their inputs again (with it,
        autograd would clone each input, which is why the training network keeps them out of place)."""
        if self.training:
            raise RuntimeError("fuse_for_inference folds BatchNorm's running statistics: call it in eval mode")
        for module in self.modules():
            if isinstance(module, nn.SiLU):
                module.inplace = True
        norm, head = self.norm, self.head
        if not (isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and isinstance(head, nn.Linear)
                and head.out_features > 0 and self.global_pool == "avg"):
            return
        scale = torch.rsqrt(norm.running_var + norm.eps)
        shift = -norm.running_mean * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        fold_affine_into_linear(head, scale, shift)
        self.norm = nn.Identity()

    def timm_reference(self) -> tuple[str, nn.Module]:
        """The seed's MaxViT-Tiny (timm's ``maxvit_tiny_tf_224`` at this image size with the stride-1
        stem, 444M MACs at 32 px), which the seed's throughput table set OutGrid against; the
        yardstick of ``python -m vitlab.bench --against timm``."""
        from vitlab.models import create_model

        net = create_model("maxvit_tiny", num_classes=self.num_classes, img_size=self.img_size, faithful=True)
        return f"maxvit_tiny_tf_224 {self.img_size}px stride-1 stem (seed's MaxViT-Tiny)", net

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, AttentionMap]:
        """Per stage and block: ``...kernel`` a :class:`KernelMap`, the dynamic-kernel weights
        ``(B, heads, k*k, H, W)`` (softmax over the taps, row-major, centre at ``k*k // 2``), and
        ``...grid`` a :class:`GridMap`, the grid-attention probabilities ``(B, g*g, heads, N, N)``
        with ``N = (H/g)(W/g)`` tokens ``g`` pixels apart."""
        H, W = x.shape[-2:]
        maps: dict[str, AttentionMap] = {}
        for name, m in self._forward(x, need_weights=True)[1].items():
            if name.startswith("front."):
                maps[name] = KernelMap(m, grid=(H, W))
                continue
            s, b, kind = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(\w+)", name).groups()
            h, w = H // 2 ** int(s), W // 2 ** int(s)
            if kind == "kernel":
                maps[name] = KernelMap(m, grid=(h, w))
            else:
                g = self.stages[int(s)].blocks[int(b)].grid.grid_size
                maps[name] = GridMap(m, grid=(h // g, w // g), stride=g)
        return maps


OutGridConfig = config_dataclass(OutGridViT)

_LAYOUT_7M = dict(dims=(48, 96, 192, 256), depths=(1, 2, 3, 1), num_heads=(2, 3, 6, 8), grid_sizes=(8, 8, 4, 2),
                  outlook_heads=(2, 3, 6, 8))
_LAYOUT_14M = dict(dims=(64, 128, 256, 384), depths=(2, 2, 3, 1), num_heads=(2, 4, 8, 6), grid_sizes=(8, 8, 4, 2),
                   outlook_heads=(2, 4, 8, 6))

model_cfgs = dict(
    # Model A, the seed's CIFAR-100 headline size: 7,518,102 params at 100 classes, 443M MACs at 32 px.
    # The seed's YAML sets drop-path 0.07; its 79.72 % run used 0.09 (experiment=cifar100_outgrid_7m).
    outgrid_7m=OutGridConfig(**_LAYOUT_7M, drop_path_rate=0.07),
    # Model A, CIFAR-100 (32 and 64 px): 14,599,198 params at 100 classes. Drop-path 0.08 is the
    # seed's YAML; its reported runs used 0.1.
    outgrid_14m=OutGridConfig(**_LAYOUT_14M, drop_path_rate=0.08),
    # The 14M layout as the seed trained it on SVHN: 14,564,548 params at 10 classes.
    outgrid_svhn=OutGridConfig(**_LAYOUT_14M, num_classes=10, drop_path_rate=0.1),
    # Model A, TinyImageNet-200 at 64 px: 22,542,628 params at 200 classes.
    outgrid_tin22m=OutGridConfig(img_size=64, num_classes=200, dims=(64, 128, 256, 384), depths=(2, 3, 4, 2),
                                 num_heads=(2, 4, 8, 6), grid_sizes=(8, 8, 4, 2), outlook_heads=(2, 4, 8, 6),
                                 drop_path_rate=0.11),
    # Model A, the seed's TinyImageNet-C model (the 7M layout, stage 2 depth 2): 6,264,452 params.
    outgrid_tinc=OutGridConfig(img_size=64, num_classes=200, **{**_LAYOUT_7M, "depths": (1, 2, 2, 1)},
                               drop_path_rate=0.1),
    # Model A, the seed's default train.yaml size: 32,974,583 params at 100 classes.
    outgrid_33m=OutGridConfig(dims=(80, 160, 320, 448), depths=(2, 3, 4, 2), num_heads=(2, 5, 10, 8),
                              grid_sizes=(4, 4, 2, 1), outlook_heads=(2, 5, 10, 8), drop_path_rate=0.12),
    # Model B: 3 front dynamic-kernel blocks, then MBConv + grid attention + MLP blocks at the 14M
    # layout: 12,266,266 params at 100 classes.
    outgrid_b=OutGridConfig(**_LAYOUT_14M, front_depth=3, kernel_in_blocks=False, drop_path_rate=0.1),
)
# `outgrid` is the family's headline size under its short name: the same config object.
model_cfgs["outgrid"] = model_cfgs["outgrid_7m"]

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(OutGridViT), module="vitlab.families.ImageClassifier", recipe="outgrid")
