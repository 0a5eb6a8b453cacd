"""One ViT backbone with pluggable attention and positional encodings: the clear-vit study.

Re-implementation of the ImageNet-100 models of github.com/4adex/clear-vit following vitlab's spec
``docs/seeds/clear_vit.md``. The backbone (B0) is a ViT-Ti/16 with CLS pooling at 256 px: patch conv 3->192
(16x16 grid), a learnable position table added to the patch tokens only, a CLS token without
position, input dropout, 12 pre-norm blocks (3 heads of 64, MLP 768, LayerNorm eps 1e-6), a final
LayerNorm and a zero-initialised linear head on the CLS output: 5,555,044 parameters at 100 classes.

The variants differ in the ``attention`` node (a layer of :mod:`vitlab.layers.vit_attention`) and
the ``position`` node (an encoding of :mod:`vitlab.layers.vit_position`: the absolute table, its
dropout, CPVT's conditional encoding): each is a class registered by name or the user's own class by
its path, with the class's own options. The blocks' MLP and norm settings are the ``block`` node.
Each node is a typed config that checks its own keys.

``patch_size: null`` picks the patch size from the image size: 4 up to 64 px (CIFAR), 16 above
(ImageNet-100 at 224 / 256 px).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.compat import upgrade_flat_vit_settings
from vitlab.errors import nearest_key_hint
from vitlab.layers.attention_maps import AttentionMap, CLSMap, TokenMap
from vitlab.layers.tracing import fx_leaf
from vitlab.layers.transformer import TransformerBlock
from vitlab.layers.vit_attention import AttentionContext, attention_config, build_attention
from vitlab.layers.vit_position import build_position, position_config
from vitlab.models._contract import ClassifierContract
from vitlab.models._registry import build_from_config, config_dataclass, register_model

__all__ = ["BlockConfig", "ViT", "ViTConfig", "default_patch_size", "model_cfgs"]

HEAD_POOLS = ("token", "concat_prefix", "avg", "")
INITS = ("b0", "torch", "torch_cls_trunc_normal")


def default_patch_size(img_size: int) -> int:
    """4 for images up to 64 px (CIFAR's 8x8 grid at 32 px), 16 above (16x16 at 256 px)."""
    return 4 if img_size <= 64 else 16


@dataclass(frozen=True)
class BlockConfig:
    """The pre-norm blocks' MLP (``mlp_ratio`` x width, ``mlp_bias``) and LayerNorm ``norm_eps`` (also
    the final norm's)."""

    mlp_ratio: float = 4.0
    mlp_bias: bool = True
    norm_eps: float = 1e-6


@fx_leaf
def check_patch_grid(
    images: torch.Tensor, patch_size: int, table_grid: tuple[int, int] | None, img_size: int
) -> torch.Tensor:
    """``images``, once their size is known to work: divisible by ``patch_size`` and, for a position
    table (``table_grid``), giving its grid. A ``torch.fx`` leaf, so the check stays out of the traced
    graph's branches and runs, as one call, whenever the traced network does."""
    H, W = images.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(f"input {H}x{W} is not divisible by patch_size {patch_size}")
    grid = (H // patch_size, W // patch_size)
    if table_grid is not None and grid != tuple(table_grid):
        raise ValueError(
            f"input {H}x{W} gives a {grid[0]}x{grid[1]} grid but the position table is "
            f"{table_grid[0]}x{table_grid[1]} (img_size {img_size}); it is not interpolated"
        )
    return images


torch.fx.wrap("check_patch_grid")


def _typed(config_type: type, node: Any, key: str) -> Any:
    """``node`` (a config, or a mapping from the command line) as a ``config_type``; an unknown key is
    one error line with the nearest name."""
    if isinstance(node, config_type):
        return node
    fields = [f.name for f in dataclasses.fields(config_type)]
    for name in node:
        if name not in fields:
            raise ValueError(f"{key}.{name}: no such setting; {nearest_key_hint(name, fields)}")
    return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in node.items()})


class ViT(ClassifierContract, nn.Module):
    """ViT backbone (patch embed, CLS, pre-norm blocks, head on the CLS output) whose attention and
    positional encoding are chosen by its ``attention`` and ``position`` nodes.

    Args (beyond the usual sizes):
        patch_size: ``None`` = :func:`default_patch_size` of ``img_size``.
        drop_rate: B0's ``dropout``: on the input tokens, after the attention and in the MLP.
        attention: a ``_target_`` and the layer's options (:func:`vitlab.layers.vit_attention.attention_config`):
            ``mhsa`` (with ``rope``), ``diffsim`` (V2), ``suppress`` (V4), ``diff`` (V6), ``alibi``
            (2D ALiBi) or a class path.
        position: a ``_target_`` and the encoding's options (:func:`vitlab.layers.vit_position.position_config`):
            ``learned`` (B0's table, with ``table_drop``), ``sincos``, ``none`` or a class path; each
            takes ``token_drop`` and CPVT's ``cpe`` options.
        block: :class:`BlockConfig`.
        num_prefix_tokens: CLS tokens in front of the patches (Mini-ViT: 2), none with a position.
        head_pool: ``token`` (the first CLS output) | ``concat_prefix`` (all prefix outputs side by
            side, Mini-ViT's head).
        init: ``b0`` (B0's init, :meth:`reset_parameters`) | ``torch`` (PyTorch's defaults and zero CLS
            tokens, Mini-ViT's seed) | ``torch_cls_trunc_normal`` (the same with truncated-normal CLS).
    """

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 100,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attention: Any = attention_config("mhsa"),
        position: Any = position_config("learned"),
        block: BlockConfig | Mapping = BlockConfig(),
        num_prefix_tokens: int = 1,
        head_pool: str = "token",
        init: str = "b0",
    ) -> None:
        super().__init__()
        # The position encoding's place among the submodules is first, so its table follows the CLS
        # token in the parameter order (the order older checkpoints' optimizer states hold); the module
        # is built after the blocks, where the random stream has always reached it.
        self.register_module("position", None)
        patch_size = default_patch_size(img_size) if patch_size is None else patch_size
        block = _typed(BlockConfig, block, "block")
        self.attention_config = attention_config(attention)
        self.position_config = position_config(position)
        self._check(img_size, patch_size, embed_dim, depth, num_heads, num_prefix_tokens, head_pool, init)
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.global_pool = head_pool  # what the head reads (forward_head, reset_classifier)
        self.init = init

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, num_prefix_tokens, embed_dim))
        if init == "torch_cls_trunc_normal":
            trunc_normal_(self.cls_token, std=0.02)  # here, in construction order: the seed's RNG stream
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(self._block(i, num_heads, drop_rate, dpr[i], block) for i in range(depth))
        self.position = build_position(self.position_config, dim=embed_dim, grid=self.grid, depth=depth)
        token_drop = self.position.token_drop
        self.pos_drop = nn.Dropout(drop_rate if token_drop is None else token_drop)
        self.norm = nn.LayerNorm(embed_dim, eps=block.norm_eps)
        self.head = nn.Linear(self.head_in_features, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        if init == "b0":
            self.reset_parameters()

    @staticmethod
    def _check(img_size, patch_size, embed_dim, depth, num_heads, num_prefix_tokens, head_pool, init) -> None:
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_prefix_tokens < 1:
            raise ValueError(f"num_prefix_tokens must be at least 1 (the CLS token), got {num_prefix_tokens}")
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool: must be one of {', '.join(map(repr, HEAD_POOLS))}, got {head_pool!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")

    def _block(self, i: int, num_heads: int, drop_rate: float, drop_path: float, block: BlockConfig) -> TransformerBlock:
        attn = build_attention(self.attention_config, dim=self.embed_dim, num_heads=num_heads, layer_index=i,
                               proj_drop=drop_rate)
        return TransformerBlock(
            self.embed_dim,
            num_heads,
            mlp_ratio=block.mlp_ratio,
            mlp_bias=block.mlp_bias,
            drop=drop_rate,
            drop_path=drop_path,
            norm_layer=partial(nn.LayerNorm, eps=block.norm_eps),
            attn_layer=attn,
        )

    # ----------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """B0's init: LeCun truncated-normal stem, N(0, 0.02^2) CLS, the position encoding's own
        :meth:`init_weights` (N(0, 0.02^2) for the learned table), each attention layer's own
        :meth:`init_weights` in block order (B0's projection init, or the seed's with the layer's
        ``seed_init``), PyTorch's default for the MLP, zero head."""
        fan_in = self.patch_embed.in_channels * self.patch_embed.kernel_size[0] * self.patch_embed.kernel_size[1]
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]
        trunc_normal_(self.patch_embed.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        self.position.init_weights()
        for block in self.blocks:
            init_weights = getattr(block.attn, "init_weights", None)
            if init_weights is not None:
                init_weights()
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """CLS token and what the position encoding (its table) and each attention layer (RoPE
        frequencies, suppression kernels, lambda vectors) name; biases and norm gains are 1-D and
        excluded by the optimizer factory anyway."""
        names = {"cls_token"} | {f"position.{name}" for name in self.position.no_weight_decay()}
        for i, block in enumerate(self.blocks):
            own = getattr(block.attn, "no_weight_decay", None)
            names |= {f"blocks.{i}.attn.{name}" for name in (own() if own is not None else ())}
        return names

    # ----------------------------------------------------------------------------- forward
    def _checked(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The images, checked (:func:`check_patch_grid`), and their patch grid."""
        images = check_patch_grid(images, self.patch_size, self.position.table_grid, self.img_size)
        return images, (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)

    def _context(self, images: torch.Tensor, grid: tuple[int, int], stats: dict | None = None) -> AttentionContext:
        return AttentionContext(grid=grid, num_prefix=self.num_prefix_tokens, images=images,
                                patch_size=self.patch_size, stats=stats)

    def _block_step(self, i: int, x: torch.Tensor, ctx: AttentionContext, need_weights: bool = False):
        """Block ``i`` on the tokens ``x`` (recomputed in the backward with gradient checkpointing),
        then the position encoding's hook where it follows that block: ``(tokens, weights or None)``."""
        block, block_ctx = self.blocks[i], dataclasses.replace(ctx, block_input=x)
        if self.grad_checkpointing and self.training and not need_weights:
            x, w = checkpoint(block, x, False, ctx=block_ctx, use_reentrant=False)
        else:
            x, w = block(x, need_weights=need_weights, ctx=block_ctx)
        if i in self.position.after_blocks:
            x = self.position.after_block(i, x, ctx.grid, self.num_prefix_tokens)
        return x, w

    def _embed(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The input tokens: the patches with their positions (the position encoding's
        :meth:`~vitlab.layers.vit_position.ViTPosition.embed`), the CLS tokens in front, token dropout."""
        x = self.position.embed(self.patch_embed(images).flatten(2).transpose(1, 2), grid)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x)

    def _forward_tokens(
        self, images: torch.Tensor, need_weights: bool = False, stats: dict | None = None
    ) -> tuple[torch.Tensor, list]:
        """Normalised tokens and each block's weights (None unless ``need_weights``); the figures
        asked for with ``stats`` (a dict this call fills) are recorded there."""
        images, grid = self._checked(images)
        ctx = self._context(images, grid, stats)
        x = self._embed(images, grid)
        weights = []
        for i in range(len(self.blocks)):
            x, w = self._block_step(i, x, ctx, need_weights)
            weights.append(w)
        return self.norm(x), weights

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + patches, embed_dim)``."""
        return self._forward_tokens(x)[0]

    def forward_features_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tokens and ``{name: detached scalar}``: ``entropy_mean`` (the per-token factor, where
        one is used) and ``lambda_mean`` (differential attention, mean over the blocks)."""
        stats: dict = {}
        tokens, _ = self._forward_tokens(x, stats=stats)
        return tokens, {f"{name}_mean": torch.stack(values).mean() for name, values in stats.items()}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``token``: the first CLS output; ``concat_prefix``: every prefix output side by side
        (Mini-ViT); ``avg``: the mean patch output; ``""``: every token."""
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "concat_prefix":
            return x[:, : self.num_prefix_tokens].flatten(1)
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def describe(self) -> str:
        """One line on the variant, logged when fitting starts."""
        def node(config: Any) -> str:
            options = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config) if f.name != "_target_")
            return f"{config._target_} ({options})"

        return (
            f"ViT variant: attention={node(self.attention_config)}, position={node(self.position_config)}, "
            f"patch {self.patch_size} -> {self.grid[0]}x{self.grid[1]} grid + {self.num_prefix_tokens} CLS, "
            f"head on {self.global_pool}"
        )

    # ----------------------------------------------------------------------------- timm's model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: the stem (the CLS token, the patch embedding
        and the position encoding's table), one group per block (with the position encoding's
        submodules that follow it, :meth:`~vitlab.layers.vit_position.ViTPosition.layer_groups`: the
        PEG), then the final norm; the head is timm's last group."""
        after = self.position.layer_groups()
        with_blocks = [(rf"^position\.{re.escape(name)}\.", (index,)) for name, index in after.items()]
        own = "".join(rf"(?!{re.escape(name)}\.)" for name in after)
        return dict(
            stem=rf"^cls_token|^patch_embed|^position\.{own}",
            blocks=[(r"^blocks\.(\d+)", None), *with_blocks, (r"^norm", (99999,))],
        )

    head_pools = HEAD_POOLS

    def _feature_taps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        images, grid = self._checked(images)
        ctx = self._context(images, grid)
        x = self._embed(images, grid)
        for i in range(len(self.blocks)):
            x, _ = self._block_step(i, x, ctx)
            yield x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's ViT form (:meth:`~vitlab.models._features.FeatureTaps.forward_intermediates`):
        ``return_prefix_tokens`` pairs each tap's patch tokens with its CLS tokens."""
        return self._intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only, return_prefix_tokens)

    @property
    def head_in_features(self) -> int:
        """The CLS output's width, or (``concat_prefix``) all prefix outputs side by side."""
        return self.embed_dim * (self.num_prefix_tokens if self.global_pool == "concat_prefix" else 1)

    def init_head(self, head: nn.Linear) -> None:
        """B0's head starts at zero."""
        if self.init == "b0":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def timm_reference(self) -> tuple[str, nn.Module]:
        """timm's VisionTransformer at this backbone's shape with plain multi-head attention and a
        learnable position table (the B0 layout), the yardstick of ``python -m vitlab.bench --against
        timm``; for a variant it shows what the variant costs over B0."""
        from timm.models.vision_transformer import VisionTransformer

        attn = self.blocks[0].attn
        net = VisionTransformer(
            img_size=self.img_size,
            patch_size=self.patch_size,
            num_classes=self.num_classes,
            embed_dim=self.embed_dim,
            depth=len(self.blocks),
            num_heads=attn.num_heads,
            mlp_ratio=self.blocks[0].mlp.fc1.out_features / self.embed_dim,
            qkv_bias=attn.qkv.bias is not None,
            class_token=True,
            reg_tokens=self.num_prefix_tokens - 1,  # extra CLS tokens are timm's register tokens
            global_pool="token",
            pos_drop_rate=self.pos_drop.p,
            proj_drop_rate=attn.proj_drop.p,
            attn_drop_rate=attn.attn_drop,
        )
        return f"VisionTransformer d{self.embed_dim} L{len(self.blocks)} h{attn.num_heads} p{self.patch_size}", net

    # ----------------------------------------------------------------------------- analysis
    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, AttentionMap]:
        """Per block ``i``:

        * ``"blocks.i"``: a :class:`TokenMap` ``(B, heads, N, N)``, N = 1 + patches, CLS first;
        * ``"blocks.i.cls"``: a :class:`CLSMap`, the CLS query's weights on the patch grid
          ``(B, heads, grid_h, grid_w)`` (what the attention dump draws for the block);
        * differential attention only: ``"blocks.i.softmax1"`` / ``"blocks.i.softmax2"``, the two
          softmax maps ``A1``, ``A2``; then ``"blocks.i"`` is ``A1 - lambda A2``, whose rows sum to
          ``1 - lambda`` (not 1) and may hold negative weights: it is marked as no distribution and
          not measured (its two softmax maps are).
        """
        _, grid = self._checked(x)
        _, weights = self._forward_tokens(x, need_weights=True)
        maps: dict[str, AttentionMap] = {}
        layout = dict(grid=grid, prefix_tokens=self.num_prefix_tokens, overlay=False)
        for i, (block, w) in enumerate(zip(self.blocks, weights)):
            name = f"blocks.{i}"
            own = getattr(block.attn, "attention_maps", None)
            typed = own(w, **layout) if own is not None else {"": TokenMap(w, **layout)}
            maps.update({f"{name}.{suffix}" if suffix else name: m for suffix, m in typed.items()})
            main = typed[""].weights
            cls = main[:, :, 0, self.num_prefix_tokens :].reshape(main.shape[0], main.shape[1], *grid)
            maps[f"{name}.cls"] = CLSMap(cls, grid=grid, prefix_tokens=self.num_prefix_tokens)
        return maps


ViTConfig = config_dataclass(ViT)
NO_TABLE = position_config("none")

#: The named sizes of the clear-vit study (README rows; parameter counts at 256 px / 100 classes).
model_cfgs = dict(
    # Row 3, the baseline B0: ViT-Ti/16, learnable PE, standard attention (5,555,044 params).
    vit=ViTConfig(),
    # Row 1 (re-specified, no seed code): B0 with dropout p=0.1 on the position table.
    vit_pe_dropout=ViTConfig(position=position_config("learned", table_drop=0.1)),
    # Row 2 (re-specified, no seed code): difference-similarity attention, boundary `sequence`.
    vit_diffsim=ViTConfig(attention=attention_config("diffsim", boundary="sequence")),
    # Row 4: spatial-suppression attention, the seed's `token_conv` mode (+324 params).
    vit_suppress=ViTConfig(attention=attention_config("suppress", mode="token_conv", radius=1)),
    # Row 5, "RoPE extension", read as RoPE-Mixed without the absolute PE (5,508,196 params).
    vit_rope=ViTConfig(attention=attention_config("mhsa", rope="mixed"), position=NO_TABLE),
    # Row 5's alternative: fixed axial 2D RoPE (theta 100), no absolute PE.
    vit_rope_axial=ViTConfig(attention=attention_config("mhsa", rope="axial"), position=NO_TABLE),
    # Row 6 (re-specified, no seed code): differential attention with lambda replaced by the
    # normalised luminance entropy of each query patch; bias-free projections as Differential
    # Transformer. `model.net.attention.lambda_mode=learned` gives plain differential attention.
    vit_diff_entropy=ViTConfig(attention=attention_config(
        "diff", lambda_mode="replace", entropy_source="pixels", qkv_bias=False, proj_bias=False
    )),
    # Row 7: RoPE-Mixed (learnable 2D frequencies per layer and head) plus the absolute PE (5,557,348).
    vit_rope_mixed=ViTConfig(attention=attention_config("mhsa", rope="mixed")),
    # Extra: bidirectional 2D ALiBi (Euclidean patch distance, CLS unbiased), no absolute PE.
    vit_alibi=ViTConfig(attention=attention_config("alibi"), position=NO_TABLE),
    # Extra: CPVT's conditional positional encoding (PEG after the first block), no absolute PE.
    vit_cpe=ViTConfig(position=position_config("none", cpe=True, cpe_after=0)),
)

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(ViT), upgrade=upgrade_flat_vit_settings,
                   module="vitlab.families.ImageClassifier", recipe="clear_vit")
