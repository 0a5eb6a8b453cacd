"""One ViT backbone with pluggable attention and positional encodings: the clear-vit study.

Re-implementation of the ImageNet-100 models of github.com/4adex/clear-vit following vitlab's spec
``docs/seeds/clear_vit.md``. The backbone (B0) is a ViT-Ti/16 with CLS pooling at 256 px: patch conv 3->192
(16x16 grid), a learnable position table added to the patch tokens only, a CLS token without
position, input dropout, 12 pre-norm blocks (3 heads of 64, MLP 768, LayerNorm eps 1e-6), a final
LayerNorm and a zero-initialised linear head on the CLS output: 5,555,044 parameters at 100 classes.

The variants differ only in ``attention`` (mhsa, diffsim, suppress, diff, alibi), ``rope`` (none,
axial, mixed), ``ape`` (the learnable table on or off), ``pe_drop_rate`` and ``cpe``; every choice
the seed left open is a constructor argument (so a ``model.net.<key>`` in the config).

``patch_size: null`` picks the patch size from the image size: 4 up to 64 px (CIFAR), 16 above
(ImageNet-100 at 224 / 256 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers.attention_maps import AttentionMap, CLSMap, TokenMap
from vitlab.layers.cpe import PEG
from vitlab.layers.dropout import dropout
from vitlab.layers.pos_embed import sincos_2d
from vitlab.layers.transformer import TransformerBlock
from vitlab.layers.vit_attention import (
    DIFF_BOUNDARIES,
    LAMBDA_MODES,
    ALiBi2DAttention,
    AttentionContext,
    DifferentialAttention,
    DiffSimAttention,
    SuppressionAttention,
    ViTAttention,
    patch_luminance_entropy,
    token_entropy,
)
from vitlab.models._registry import build_from_config, config_dataclass, register_model

__all__ = ["ViT", "ViTConfig", "default_patch_size", "model_cfgs"]

ATTENTIONS = ("mhsa", "diffsim", "suppress", "diff", "alibi")
ROPES = (None, "axial", "mixed")
ENTROPY_SOURCES = ("pixels", "tokens", "attention")
HEAD_POOLS = ("token", "concat_prefix")
INITS = ("b0", "torch")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Heo et al.'s bases: 100 for the fixed axial frequencies, 10 for the initial mixed ones.
DEFAULT_ROPE_THETA = {"axial": 100.0, "mixed": 10.0}


def default_patch_size(img_size: int) -> int:
    """4 for images up to 64 px (CIFAR's 8x8 grid at 32 px), 16 above (16x16 at 256 px)."""
    return 4 if img_size <= 64 else 16


class ViT(nn.Module):
    """ViT backbone (patch embed, CLS, pre-norm blocks, head on the CLS output) whose attention and
    positional encoding are chosen by its arguments.

    Args (beyond the usual sizes):
        patch_size: ``None`` = :func:`default_patch_size` of ``img_size``.
        drop_rate: B0's ``dropout``: on the input tokens, after the attention and in the MLP.
        attn_drop_rate: dropout on the attention weights (B0's ``attention_dropout``).
        pe_drop_rate: V1: element-wise dropout (inverted scaling) on the position table before it is
            added, an independent mask per image; CLS unaffected.
        ape: add the learnable position table (N(0, 0.02^2)) to the patch tokens.
        attention: ``mhsa`` | ``diffsim`` (V2) | ``suppress`` (V4) | ``diff`` (V6) | ``alibi`` (2D ALiBi).
        rope: ``None`` | ``axial`` (fixed) | ``mixed`` (learnable per layer and head); with ``mhsa``,
            ``suppress`` or ``alibi``. ``rope_theta`` ``None`` = 100 (axial) / 10 (mixed).
        diff_boundary: V2's boundary rule, ``sequence`` | ``patches`` | ``rows``.
        suppression_mode, suppression_radius: V4's ``token_conv`` (the seed) | ``grid``, kernel 2r+1.
        lambda_mode: V6's ``replace`` | ``scale`` | ``learned`` (plain differential attention).
        entropy_source: V6's ``pixels`` | ``tokens`` | ``attention``; ``entropy_mean``/``entropy_std``
            undo the input normalisation for ``pixels``.
        alibi_distance: ``euclidean`` | ``manhattan`` patch distance.
        cpe: insert a PEG (depthwise ``cpe_kernel_size`` conv, residual on the patches) after block
            ``cpe_after`` (0 = after the first block, as CPVT); ``cpe_zero_init`` starts it as identity.
        legacy_init: the seed's per-variant attention init (V4: uniform weights with default biases;
            RoPE: PyTorch's default) instead of B0's for all.
        qkv_bias, proj_bias: biases of the attention projections (the differential variant has none).
        num_prefix_tokens: CLS tokens in front of the patches (Mini-ViT: 2), none with a position.
        sincos_pe: a fixed 2D sin-cos table on the patches instead of the learnable one (``ape``).
        pos_drop_rate: dropout on the input tokens; ``None`` = ``drop_rate`` (B0), 0 for Mini-ViT.
        mlp_bias: biases of the MLP's linears (Mini-ViT's seed has none).
        head_pool: ``token`` (the first CLS output) | ``concat_prefix`` (all prefix outputs side by
            side, Mini-ViT's head).
        init: ``b0`` (B0's init, below) | ``torch`` (PyTorch's defaults, Mini-ViT's seed);
            ``cls_init`` (``zeros`` | ``trunc_normal``) applies with ``torch``.
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
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pe_drop_rate: float = 0.0,
        ape: bool = True,
        attention: str = "mhsa",
        rope: str | None = None,
        rope_theta: float | None = None,
        diff_boundary: str = "sequence",
        suppression_mode: str = "token_conv",
        suppression_radius: int = 1,
        lambda_mode: str = "replace",
        entropy_source: str = "pixels",
        entropy_mean: Sequence[float] = IMAGENET_MEAN,
        entropy_std: Sequence[float] = IMAGENET_STD,
        alibi_distance: str = "euclidean",
        cpe: bool = False,
        cpe_after: int = 0,
        cpe_kernel_size: int = 3,
        cpe_zero_init: bool = False,
        legacy_init: bool = False,
        norm_eps: float = 1e-6,
        num_prefix_tokens: int = 1,
        sincos_pe: bool = False,
        pos_drop_rate: float | None = None,
        mlp_bias: bool = True,
        head_pool: str = "token",
        init: str = "b0",
        cls_init: str = "zeros",
    ) -> None:
        super().__init__()
        patch_size = default_patch_size(img_size) if patch_size is None else patch_size
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if rope not in ROPES:
            raise ValueError(f"rope must be null, axial or mixed, got {rope!r}")
        if rope is not None and attention in ("diffsim", "diff"):
            raise ValueError(f"rope={rope} does not combine with attention={attention}; use mhsa, suppress or alibi")
        if rope is not None and (embed_dim // num_heads) % 4 != 0:
            raise ValueError(
                f"rope needs a head dim (embed_dim / num_heads) divisible by 4, got {embed_dim // num_heads}"
            )
        if diff_boundary not in DIFF_BOUNDARIES:
            raise ValueError(f"diff_boundary must be one of {', '.join(DIFF_BOUNDARIES)}, got {diff_boundary!r}")
        if lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"lambda_mode must be one of {', '.join(LAMBDA_MODES)}, got {lambda_mode!r}")
        if entropy_source not in ENTROPY_SOURCES:
            raise ValueError(f"entropy_source must be one of {', '.join(ENTROPY_SOURCES)}, got {entropy_source!r}")
        if cpe and not 0 <= cpe_after < depth:
            raise ValueError(f"cpe_after {cpe_after} must index a block (0 .. {depth - 1})")
        if not 0.0 <= pe_drop_rate < 1.0:
            raise ValueError(f"pe_drop_rate must be in [0, 1), got {pe_drop_rate}")
        if pe_drop_rate > 0 and not ape:
            raise ValueError("pe_drop_rate needs the position table (ape: true)")
        if num_prefix_tokens < 1:
            raise ValueError(f"num_prefix_tokens must be at least 1 (the CLS token), got {num_prefix_tokens}")
        if sincos_pe and ape:
            raise ValueError("sincos_pe (a fixed table) and ape (a learnable one) exclude each other; set ape: false")
        if sincos_pe and embed_dim % 4:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 for the 2D sin-cos PE")
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {', '.join(HEAD_POOLS)}, got {head_pool!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if cls_init not in ("zeros", "trunc_normal"):
            raise ValueError(f"cls_init must be 'zeros' or 'trunc_normal', got {cls_init!r}")
        if attention == "diff" and lambda_mode != "learned" and entropy_source == "pixels":
            if len(entropy_mean) != in_chans or len(entropy_std) != in_chans:
                raise ValueError(f"entropy_mean and entropy_std need {in_chans} values (one per input channel)")

        self.num_classes = num_classes
        self.num_features = embed_dim
        # The head reads the CLS output, or (head_pool=concat_prefix) all prefix outputs side by side.
        self.head_features = embed_dim * (num_prefix_tokens if head_pool == "concat_prefix" else 1)
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.head_pool = head_pool
        self.init = init
        self.attention = attention
        self.rope = rope
        self.lambda_mode = lambda_mode
        self.entropy_source = entropy_source
        self.entropy_mean = tuple(float(m) for m in entropy_mean)
        self.entropy_std = tuple(float(s) for s in entropy_std)
        self.legacy_init = legacy_init
        self.cpe_after = cpe_after if cpe else None
        num_patches = self.grid[0] * self.grid[1]

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, num_prefix_tokens, embed_dim))
        if init == "torch" and cls_init == "trunc_normal":
            trunc_normal_(self.cls_token, std=0.02)  # here, in construction order: the seed's RNG stream
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches, embed_dim)) if ape else None
        # A fixed table is derived from the config, so checkpoints need not carry it.
        self.register_buffer("sincos_pos_embed", sincos_2d(*self.grid, embed_dim)[None] if sincos_pe else None, persistent=False)
        self.pe_drop_rate = pe_drop_rate
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)

        theta = DEFAULT_ROPE_THETA.get(rope, 10.0) if rope_theta is None else rope_theta
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        common = dict(qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop_rate, proj_drop=drop_rate)
        rope_kwargs = dict(rope=rope, rope_theta=theta)

        def make_attention(i: int) -> nn.Module:
            if attention == "mhsa":
                return ViTAttention(embed_dim, num_heads, **common, **rope_kwargs)
            if attention == "diffsim":
                return DiffSimAttention(embed_dim, num_heads, diff_boundary=diff_boundary, **common)
            if attention == "suppress":
                return SuppressionAttention(
                    embed_dim, num_heads, suppression_mode=suppression_mode, suppression_radius=suppression_radius,
                    **common, **rope_kwargs,
                )
            if attention == "alibi":
                return ALiBi2DAttention(embed_dim, num_heads, alibi_distance=alibi_distance, **common, **rope_kwargs)
            return DifferentialAttention(
                embed_dim, num_heads, layer_index=i, lambda_mode=lambda_mode, entropy_source=entropy_source, **common
            )

        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                mlp_bias=mlp_bias,
                drop=drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                attn_layer=make_attention(i),
            )
            for i in range(depth)
        )
        self.peg = PEG(embed_dim, cpe_kernel_size, zero_init=cpe_zero_init) if cpe else None
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(self.head_features, num_classes)
        self.grad_checkpointing = False
        if init == "b0":
            self.reset_parameters()

    # ----------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """B0's init: LeCun truncated-normal stem, N(0, 0.02^2) CLS and position table,
        attention projections U(-sqrt(3/dim), sqrt(3/dim)) with zero biases, PyTorch's default for the
        MLP, zero head. ``legacy_init`` keeps the seed's per-variant attention init instead."""
        fan_in = self.patch_embed.in_channels * self.patch_embed.kernel_size[0] * self.patch_embed.kernel_size[1]
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]
        trunc_normal_(self.patch_embed.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        bound = math.sqrt(3.0 / self.embed_dim)
        for block in self.blocks:
            attn = block.attn
            if self.legacy_init and self.rope == "mixed":
                continue  # the seed's RoPE attention: PyTorch's default Linear init
            for linear in (attn.qkv, attn.proj):
                nn.init.uniform_(linear.weight, -bound, bound)
                if linear.bias is not None:
                    if self.legacy_init and self.attention == "suppress":
                        b = 1.0 / math.sqrt(linear.in_features)  # the seed's V4 keeps default biases
                        nn.init.uniform_(linear.bias, -b, b)
                    else:
                        nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position table, CLS token, RoPE frequencies, suppression kernels, lambda vectors (biases and
        norm gains are 1-D and excluded by the optimizer factory anyway)."""
        names = {"cls_token"} | ({"pos_embed"} if self.pos_embed is not None else set())
        suffixes = (".rope.freqs", ".attn.kernel", ".lambda_q1", ".lambda_k1", ".lambda_q2", ".lambda_k2")
        return names | {n for n, _ in self.named_parameters() if n.endswith(suffixes)}

    # ----------------------------------------------------------------------------- forward
    def _grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input {H}x{W} is not divisible by patch_size {p}")
        grid = (H // p, W // p)
        if (self.pos_embed is not None or self.sincos_pos_embed is not None) and grid != self.grid:
            raise ValueError(
                f"input {H}x{W} gives a {grid[0]}x{grid[1]} grid but the position table is "
                f"{self.grid[0]}x{self.grid[1]} (img_size {self.img_size}); it is not interpolated"
            )
        return grid

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            table = self.pos_embed
            if self.pe_drop_rate > 0 and self.training:
                # An independent mask per image. Functional, not a module: torch's module tracker (flop
                # counter) cannot hook a parameter's view made under no_grad.
                table = dropout(table.expand(x.shape[0], -1, -1), self.pe_drop_rate)
            x = x + table
        if self.sincos_pos_embed is not None:
            x = x + self.sincos_pos_embed
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x)

    @property
    def uses_modulation(self) -> bool:
        return self.attention == "diff" and self.lambda_mode != "learned"

    def _pixel_modulation(self, images: torch.Tensor) -> torch.Tensor:
        ent = patch_luminance_entropy(images, self.patch_size, self.entropy_mean, self.entropy_std)
        return torch.cat((ent.mean(1, keepdim=True), ent), dim=1)  # CLS gets the image mean

    def _forward_tokens(
        self, images: torch.Tensor, need_weights: bool = False, stats: dict | None = None
    ) -> tuple[torch.Tensor, list]:
        """Normalised tokens and each block's weights (None unless ``need_weights``); the figures
        asked for with ``stats`` (a dict this call fills) are recorded there."""
        grid = self._grid_of(images)
        ctx = AttentionContext(grid=grid, num_prefix=self.num_prefix_tokens, stats=stats)
        if self.uses_modulation and self.entropy_source == "pixels":
            ctx.modulation = self._pixel_modulation(images)
            ctx.record("entropy", ctx.modulation.mean())
        x = self._embed(images)
        weights = []
        for i, block in enumerate(self.blocks):
            if self.uses_modulation and self.entropy_source == "tokens":
                ctx = AttentionContext(grid=grid, num_prefix=self.num_prefix_tokens, modulation=token_entropy(x), stats=stats)
                if i == 0:
                    ctx.record("entropy", ctx.modulation.mean())
            if self.grad_checkpointing and self.training and not need_weights:
                x, w = checkpoint(block, x, False, ctx=ctx, use_reentrant=False)
            else:
                x, w = block(x, need_weights=need_weights, ctx=ctx)
            weights.append(w)
            if self.peg is not None and i == self.cpe_after:
                x = self.peg(x, grid, self.num_prefix_tokens)
        return self.norm(x), weights

    def forward_features(self, x: torch.Tensor, return_aux: bool = False):
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + patches, embed_dim)``; with
        ``return_aux`` also ``{name: detached scalar}``: ``entropy_mean`` (the per-token factor, where
        one is used) and ``lambda_mean`` (differential attention, mean over the blocks)."""
        stats: dict | None = {} if return_aux else None
        tokens, _ = self._forward_tokens(x, stats=stats)
        if not return_aux:
            return tokens
        return tokens, {f"{name}_mean": torch.stack(values).mean() for name, values in stats.items()}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, : self.num_prefix_tokens].flatten(1) if self.head_pool == "concat_prefix" else x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits; with ``return_aux`` ``(logits, aux)`` as :meth:`forward_features` gives them."""
        if return_aux:
            tokens, aux = self.forward_features(x, return_aux=True)
            return self.forward_head(tokens), aux
        return self.forward_head(self.forward_features(x))

    def describe(self) -> str:
        """One line on the variant, logged when fitting starts."""
        return (
            f"ViT variant: attention={self.attention}, rope={self.rope}, ape={self.pos_embed is not None}, "
            f"cpe={self.peg is not None}, sincos_pe={self.sincos_pos_embed is not None}, patch {self.patch_size} -> "
            f"{self.grid[0]}x{self.grid[1]} grid + {self.num_prefix_tokens} CLS, head on {self.head_pool}"
        )

    # ----------------------------------------------------------------------------- timm's model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: the stem, one group per block (the PEG
        with the block it follows), then the final norm; the head is timm's last group."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",  # (sincos_pos_embed is a buffer, no parameter)
            blocks=[(r"^blocks\.(\d+)", None), (r"^peg", (self.cpe_after or 0,)), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (zero-initialised, as B0's) head for ``num_classes``; 0 = no head (features out)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"ViT pools its CLS token(s); global_pool={global_pool!r} is not supported")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0 and self.init == "b0":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

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
        grid = self._grid_of(x)
        _, weights = self._forward_tokens(x, need_weights=True)
        maps: dict[str, AttentionMap] = {}
        tokens = dict(grid=grid, prefix_tokens=self.num_prefix_tokens, overlay=False)
        for i, w in enumerate(weights):
            name = f"blocks.{i}"
            if isinstance(w, dict):  # differential: A1 - lambda A2 and its two softmax maps
                maps[name] = TokenMap(w[""], dim=None, measure=False, **tokens)
                maps[f"{name}.softmax1"] = TokenMap(w["softmax1"], **tokens)
                maps[f"{name}.softmax2"] = TokenMap(w["softmax2"], **tokens)
                w = w[""]
            else:
                maps[name] = TokenMap(w, **tokens)
            cls = w[:, :, 0, self.num_prefix_tokens :].reshape(w.shape[0], w.shape[1], *grid)
            maps[f"{name}.cls"] = CLSMap(cls, grid=grid, prefix_tokens=self.num_prefix_tokens)
        return maps


ViTConfig = config_dataclass(ViT)

#: The named sizes of the clear-vit study (README rows; parameter counts at 256 px / 100 classes).
model_cfgs = dict(
    # Row 3, the baseline B0: ViT-Ti/16, learnable PE, standard attention (5,555,044 params).
    vit=ViTConfig(),
    # Row 1 (re-specified, no seed code): B0 with dropout p=0.1 on the position table.
    vit_pe_dropout=ViTConfig(pe_drop_rate=0.1),
    # Row 2 (re-specified, no seed code): difference-similarity attention, boundary `sequence`.
    vit_diffsim=ViTConfig(attention="diffsim", diff_boundary="sequence"),
    # Row 4: spatial-suppression attention, the seed's `token_conv` mode (+324 params).
    vit_suppress=ViTConfig(attention="suppress", suppression_mode="token_conv", suppression_radius=1),
    # Row 5, "RoPE extension", read as RoPE-Mixed without the absolute PE (5,508,196 params).
    vit_rope=ViTConfig(rope="mixed", ape=False),
    # Row 5's alternative: fixed axial 2D RoPE (theta 100), no absolute PE.
    vit_rope_axial=ViTConfig(rope="axial", ape=False),
    # Row 6 (re-specified, no seed code): differential attention with lambda replaced by the
    # normalised luminance entropy of each query patch; bias-free projections as Differential
    # Transformer. `lambda_mode=learned` gives plain differential attention.
    vit_diff_entropy=ViTConfig(
        attention="diff", lambda_mode="replace", entropy_source="pixels", qkv_bias=False, proj_bias=False
    ),
    # Row 7: RoPE-Mixed (learnable 2D frequencies per layer and head) plus the absolute PE (5,557,348).
    vit_rope_mixed=ViTConfig(rope="mixed", ape=True),
    # Extra: bidirectional 2D ALiBi (Euclidean patch distance, CLS unbiased), no absolute PE.
    vit_alibi=ViTConfig(attention="alibi", ape=False),
    # Extra: CPVT's conditional positional encoding (PEG after the first block), no absolute PE.
    vit_cpe=ViTConfig(cpe=True, cpe_after=0, ape=False),
)

for _name, _cfg in model_cfgs.items():
    register_model(_name, _cfg, build_from_config(ViT))
