"""Pluggable self-attention for the ViT backbone (clear-vit's variants, Mini-ViT, and the user's own).

An attention layer is one class. The backbone builds block ``i``'s layer as
``cls(dim=, num_heads=, layer_index=i, proj_drop=, **options)``, where ``options`` are the rest of the
``model.net.attention`` node; ``_target_`` names the class: a name registered here with
:func:`register_attention` (``mhsa``, ``diffsim``, ``suppress``, ``diff``, ``alibi``) or the dotted path
of a class in the user's own package (``mypkg.attn.MyAttention``). The class's constructor is its
typed config: :func:`attention_config` derives a frozen dataclass from its keyword options (the
defaults written once, in the constructor), and the constructor checks its own arguments.

Every layer takes the LN output ``x`` of shape ``(B, N, dim)`` (``num_prefix`` CLS tokens first, then
the patches of a ``grid_h x grid_w`` grid in raster order) and returns ``(output, weights or None)``, as
:class:`vitlab.layers.Attention` does. The token layout travels in an :class:`AttentionContext`.
Subclassing :class:`ViTAttention` gives a new layer the rest of the protocol: B0's init
(:meth:`~ViTAttention.init_weights`), typed attention maps (:meth:`~ViTAttention.attention_maps`) and
the parameters kept out of weight decay (:meth:`~ViTAttention.no_weight_decay`).

All of them compute their softmax with :func:`vitlab.layers.attend` (SDPA unless the weights are asked
for) or, when the score matrix itself must be edited, with :func:`vitlab.layers.attention.attend_scores`:

====================== ======================================================== ===========================
module                 scores                                                   path
====================== ======================================================== ===========================
ViTAttention           ``q k^T / sqrt(d)`` (q, k optionally rotated by 2D RoPE) SDPA
DiffSimAttention       ``dq dk^T / sqrt(d)`` with first differences along tokens SDPA on (dq, dk, v)
ALiBi2DAttention       ``q k^T / sqrt(d) - m_h * dist(p_i, p_j)``               SDPA, additive mask
SuppressionAttention   ``S - K_h * S`` (a learned 3x3 correlation of the scores) explicit
DifferentialAttention  ``(A1 - lambda A2) V``, two softmax maps of half-width    SDPA, both maps in one call
====================== ======================================================== ===========================
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers.attention import Attention, attend, attend_scores
from vitlab.layers.attention_maps import AttentionMap, TokenMap
from vitlab.layers.plugins import PluginKind
from vitlab.layers.rope import RoPE2D, grid_positions
from vitlab.layers.tracing import fx_leaf

__all__ = [
    "ATTENTION_LAYERS",
    "ALiBi2DAttention",
    "AttentionContext",
    "attention_class",
    "attention_config",
    "attention_options",
    "register_attention",
    "DiffSimAttention",
    "DifferentialAttention",
    "SuppressionAttention",
    "ViTAttention",
    "alibi_bias_2d",
    "alibi_slopes",
    "differential_lambda_init",
    "first_difference",
    "patch_luminance_entropy",
    "token_entropy",
]

DIFF_BOUNDARIES = ("sequence", "patches", "rows")
SUPPRESSION_MODES = ("token_conv", "grid")
LAMBDA_MODES = ("replace", "scale", "learned")
ALIBI_DISTANCES = ("euclidean", "manhattan")
ENTROPY_SOURCES = ("pixels", "tokens", "attention")
ROPES = (None, "axial", "mixed")
# Heo et al.'s bases: 100 for the fixed axial frequencies, 10 for the initial mixed ones.
DEFAULT_ROPE_THETA = {"axial": 100.0, "mixed": 10.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: What the backbone passes every attention layer; the rest of the attention node are its own options.
BACKBONE_ARGS = ("dim", "num_heads", "layer_index", "proj_drop")
ATTENTION = PluginKind("attention", "attention", BACKBONE_ARGS, "mypkg.attn.MyAttention")
#: The attention layers of the ViT backbone by name (``model.net.attention._target_``).
ATTENTION_LAYERS: dict[str, type[nn.Module]] = ATTENTION.registry


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``name`` select the class in ``model.net.attention._target_``."""
    return ATTENTION.register(name)


def attention_class(target: str) -> type[nn.Module]:
    """The class a ``_target_`` names: a registered name, or ``package.module.Class``."""
    return ATTENTION.resolve(target)


def attention_options(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """A layer's own options: the keyword arguments of its constructor (and, through ``**kwargs``, of
    its bases' constructors) beyond :data:`BACKBONE_ARGS`, each with its default."""
    return ATTENTION.options(cls)


def attention_config(spec: str | Mapping[str, Any] | Any = "mhsa", **options: Any) -> Any:
    """The typed config of an attention layer: a frozen dataclass with ``_target_`` and every option
    of the class (its defaults, then ``options``). ``spec`` is a ``_target_`` or a node
    (``{"_target_": ..., **options}``, e.g. from the command line); an unknown option is one error
    line with the nearest name."""
    return ATTENTION.config(spec, **options)


def build_attention(config: Any, **backbone: Any) -> nn.Module:
    """Block ``backbone["layer_index"]``'s layer from a config of :func:`attention_config`."""
    return ATTENTION.build(config, **backbone)


@dataclass
class AttentionContext:
    """What an attention layer may need besides its input, made by the backbone once per forward.

    ``grid`` = (rows, columns) of the patch grid, ``num_prefix`` CLS tokens in front; ``positions``
    (x, y) replaces the raster positions of the patches for RoPE (tests); ``images`` and
    ``patch_size`` are the input images and their patch size; ``block_input`` is the residual stream
    entering the current block (before its norm); ``shared`` holds what one layer computes once per
    forward for all (:meth:`once`).
    """

    grid: tuple[int, int]
    num_prefix: int = 1
    positions: tuple[torch.Tensor, torch.Tensor] | None = None
    images: torch.Tensor | None = None
    patch_size: int = 1
    block_input: torch.Tensor | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    #: Per-forward figures the caller asked for (``{name: [one detached scalar per layer]}``), or
    #: None. Created by the caller for one forward and returned by it: no module keeps them.
    stats: dict[str, list[torch.Tensor]] | None = None

    def record(self, name: str, value: torch.Tensor) -> None:
        if self.stats is not None:
            self.stats.setdefault(name, []).append(value.detach())

    def once(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` the first time a layer asks for ``key`` in this forward, the same tensor after."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    B, N, C = t.shape
    return t.view(B, N, heads, C // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    B, H, N, D = t.shape
    return t.transpose(1, 2).reshape(B, N, H * D)


@register_attention("mhsa")
class ViTAttention(Attention):
    """Standard multi-head attention (fused QKV with bias, output projection), optionally with 2D RoPE
    on the patch tokens' q and k. Runs on SDPA unless the weights are asked for.

    Args (the options of ``model.net.attention``):
        qkv_bias, proj_bias: biases of the projections.
        attn_drop: dropout on the attention weights (B0's ``attention_dropout``).
        rope: ``None`` | ``axial`` (fixed) | ``mixed`` (learnable per layer and head) 2D RoPE;
            ``rope_theta`` ``None`` = 100 (axial) / 10 (mixed).
        seed_init: keep the clear-vit seed's per-variant init of this layer instead of B0's
            (:meth:`init_weights`).

    Subclasses change the scores through two hooks: :meth:`_queries_keys` (edit q and k) and
    :meth:`_attend` (compute the attention from q, k, v).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rope: str | None = None,
        rope_theta: float | None = None,
        seed_init: bool = False,
        layer_index: int = 0,
    ) -> None:
        if rope not in ROPES:
            raise ValueError(f"attention.rope: must be null, axial or mixed, got {rope!r}")
        if rope is not None and dim % num_heads == 0 and (dim // num_heads) % 4 != 0:
            raise ValueError(f"attention.rope: needs a head dim (embed_dim / num_heads) divisible by 4, got {dim // num_heads}")
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        theta = DEFAULT_ROPE_THETA.get(rope, 10.0) if rope_theta is None else rope_theta
        self.rope = RoPE2D(num_heads, self.head_dim, kind=rope, theta=theta) if rope is not None else None
        self.seed_init = seed_init

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, ctx: AttentionContext | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self._queries_keys(q, k, ctx)
        dropout_p = self.attn_drop if self.training else 0.0
        out, weights = self._attend(q, k, v, ctx, dropout_p, need_weights)
        return self.proj_drop(self.proj(_merge_heads(out))), weights

    def _queries_keys(
        self, q: torch.Tensor, k: torch.Tensor, ctx: AttentionContext | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope is None:
            return q, k
        if ctx is None:
            raise ValueError("RoPE attention needs an AttentionContext with the patch grid")
        return self.rope(q, k, ctx.grid, ctx.num_prefix, ctx.positions)

    def _attend(self, q, k, v, ctx, dropout_p, need_weights):
        return attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights)

    def scores(self, x: torch.Tensor, ctx: AttentionContext | None = None) -> torch.Tensor:
        """Pre-softmax scores ``(B, heads, N, N)`` of the plain ``q k^T / sqrt(d)`` form (after the
        q/k hook): for tests and analysis."""
        B, N, _ = x.shape
        q, k, _ = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self._queries_keys(q, k, ctx)
        return (q @ k.transpose(-2, -1)) * self.head_dim**-0.5

    # ----------------------------------------------------------------------------- the backbone's hooks
    @torch.no_grad()
    def init_weights(self) -> None:
        """B0's init, called by the backbone in block order: projections U(-sqrt(3/dim), sqrt(3/dim))
        with zero biases. With ``seed_init`` the seed's own: PyTorch's default Linear init for RoPE-Mixed,
        and default biases (:meth:`_seed_keeps_biases`) for the layers whose seed kept them."""
        if self.seed_init and self.rope is not None and self.rope.kind == "mixed":
            return
        init_projections(self.qkv, self.proj, keep_biases=self.seed_init and self._seed_keeps_biases)

    _seed_keeps_biases = False

    def no_weight_decay(self) -> set[str]:
        """This layer's parameters that take no weight decay: RoPE's learnable frequencies."""
        return {name for name, _ in self.named_parameters() if name == "rope.freqs"}

    def attention_maps(self, weights: torch.Tensor, **layout: Any) -> dict[str, AttentionMap]:
        """The typed maps of this layer's ``weights`` (as its forward returns them with
        ``need_weights``), keyed by a suffix of the block's name ("" = the block's own map)."""
        return {"": TokenMap(weights, **layout)}


def init_projections(qkv: nn.Linear, proj: nn.Linear, keep_biases: bool = False) -> None:
    """B0's attention init: weights U(-sqrt(3/dim), sqrt(3/dim)), zero biases (or PyTorch's default
    biases, drawn again, with ``keep_biases``)."""
    bound = math.sqrt(3.0 / qkv.in_features)
    for linear in (qkv, proj):
        nn.init.uniform_(linear.weight, -bound, bound)
        if linear.bias is not None:
            if keep_biases:
                b = 1.0 / math.sqrt(linear.in_features)
                nn.init.uniform_(linear.bias, -b, b)
            else:
                nn.init.zeros_(linear.bias)


@fx_leaf
def predecessor_mask(num_tokens: int, boundary: str, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """``(N,)`` with 1 where token ``i`` is differenced against token ``i - 1`` and 0 where it gets a
    zero predecessor (see :func:`first_difference`). A ``torch.fx`` leaf: its size is the input's."""
    if boundary not in DIFF_BOUNDARIES:
        raise ValueError(f"diff_boundary must be one of {', '.join(DIFF_BOUNDARIES)}, got {boundary!r}")
    keep = torch.ones(num_tokens)
    if boundary == "sequence":
        keep[0] = 0.0
    else:
        keep[: num_prefix + 1] = 0.0  # CLS tokens keep their raw q/k; the first patch has no predecessor
        if boundary == "rows":
            keep[num_prefix :: grid[1]] = 0.0  # the first patch of every row: no wrap across rows
    return keep


def first_difference(t: torch.Tensor, boundary: str, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """``t_i - t_{i-1}`` along the token axis of ``(B, heads, N, d)``, with the boundary rule
    ``diff_boundary``:

    * ``sequence``: over the whole sequence [CLS, p_0, ...]; index 0 has a zero predecessor, so p_0 is
      differenced against CLS and the first patch of a row against the last patch of the row above.
    * ``patches``: CLS tokens keep their raw value; p_0 has a zero predecessor; raster order otherwise.
    * ``rows``: as ``patches``, and the first patch of every row has a zero predecessor.
    """
    keep = predecessor_mask(t.shape[-2], boundary, grid, num_prefix).to(t.device, t.dtype)
    prev = F.pad(t[..., :-1, :], (0, 0, 1, 0))
    return t - keep[:, None] * prev


@register_attention("diffsim")
class DiffSimAttention(ViTAttention):
    """Difference-similarity attention (V2, re-specified): ``softmax(dq dk^T / sqrt(d)) v`` with the
    first differences ``dq``, ``dk`` of :func:`first_difference` under the ``boundary`` rule; v is left
    raw. No new parameters."""

    def __init__(self, dim: int, num_heads: int, boundary: str = "sequence", **kwargs) -> None:
        if boundary not in DIFF_BOUNDARIES:
            raise ValueError(f"attention.boundary: must be one of {', '.join(DIFF_BOUNDARIES)}, got {boundary!r}")
        if kwargs.get("rope") is not None:
            raise ValueError(f"attention.rope: rope={kwargs['rope']} does not combine with difference-similarity attention")
        super().__init__(dim, num_heads, **kwargs)
        self.diff_boundary = boundary

    def _queries_keys(self, q, k, ctx):
        grid, prefix = (ctx.grid, ctx.num_prefix) if ctx is not None else ((1, q.shape[-2]), 0)
        return (
            first_difference(q, self.diff_boundary, grid, prefix),
            first_difference(k, self.diff_boundary, grid, prefix),
        )

    def extra_repr(self) -> str:
        return f"diff_boundary={self.diff_boundary}"


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head slopes ``m_h = 2 ** (-8 (h + 1) / H)``."""
    return 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, dtype=torch.float64) / num_heads)


@fx_leaf
def alibi_bias_2d(
    num_heads: int, grid: tuple[int, int], num_prefix: int = 1, distance: str = "euclidean"
) -> torch.Tensor:
    """Bidirectional 2D ALiBi bias ``(heads, N, N)``: ``-m_h * dist(p_i, p_j)`` between patches on the
    grid, 0 in the rows and columns of the CLS tokens. A ``torch.fx`` leaf: the grid is the input's."""
    if distance not in ALIBI_DISTANCES:
        raise ValueError(f"alibi_distance must be one of {', '.join(ALIBI_DISTANCES)}, got {distance!r}")
    xs, ys = grid_positions(*grid)
    dx, dy = xs[:, None] - xs[None, :], ys[:, None] - ys[None, :]
    dist = (dx.square() + dy.square()).sqrt() if distance == "euclidean" else dx.abs() + dy.abs()
    n = num_prefix + xs.numel()
    bias = torch.zeros(num_heads, n, n, dtype=torch.float64)
    bias[:, num_prefix:, num_prefix:] = -alibi_slopes(num_heads)[:, None, None] * dist.double()[None]
    return bias.float()


@register_attention("alibi")
class ALiBi2DAttention(ViTAttention):
    """Bidirectional ALiBi on the 2D patch distance, as an additive SDPA mask (no parameters). Unlike
    the seed's block: no causal mask, 2D instead of 1D token distance, CLS unbiased, an output
    projection, and the bias built for the input's grid (not a fixed 2048 x 2048 buffer)."""

    def __init__(self, dim: int, num_heads: int, distance: str = "euclidean", **kwargs) -> None:
        if distance not in ALIBI_DISTANCES:
            raise ValueError(f"attention.distance: must be one of {', '.join(ALIBI_DISTANCES)}, got {distance!r}")
        super().__init__(dim, num_heads, **kwargs)
        self.alibi_distance = distance

    def bias(self, ctx: AttentionContext, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return alibi_bias_2d(self.num_heads, ctx.grid, ctx.num_prefix, self.alibi_distance).to(device, dtype)

    def _attend(self, q, k, v, ctx, dropout_p, need_weights):
        if ctx is None:
            raise ValueError("ALiBi attention needs an AttentionContext with the patch grid")
        mask = self.bias(ctx, q.device, q.dtype)
        return attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, attn_mask=mask)

    def extra_repr(self) -> str:
        return f"alibi_distance={self.alibi_distance}"


@register_attention("suppress")
class SuppressionAttention(ViTAttention):
    """Spatial-suppression attention (V4): ``S' = S - K (*) S`` before the softmax, so it materialises
    the score matrix.

    * ``token_conv`` (the seed's code): one ``(2r+1)^2`` kernel per head, a cross-correlation over each
      head's ``N x N`` score matrix taken as an image (query index x key index, CLS row and column
      included, zero outside), centre tap included. ``heads * (2r+1)^2`` parameters.
    * ``grid`` (the design commented out in the seed): the score row of each query patch minus a
      kernel-weighted sum of the rows of its neighbours on the patch grid (centre tap excluded, zero
      outside the grid); one kernel shared by all heads; the CLS row is left alone.
      ``(2r+1)^2`` parameters, the centre one unused.

    Kernels start U(-1/(2r+1), 1/(2r+1)), PyTorch's default for such a depthwise conv. Attention
    dropout is ``attn_drop`` (the seed used the block dropout). The options are ``mode`` and
    ``radius`` r; with ``seed_init`` the projections keep PyTorch's default biases, as the seed's did.
    """

    _seed_keeps_biases = True

    def __init__(self, dim: int, num_heads: int, mode: str = "token_conv", radius: int = 1, **kwargs) -> None:
        if mode not in SUPPRESSION_MODES:
            raise ValueError(f"attention.mode: must be one of {', '.join(SUPPRESSION_MODES)}, got {mode!r}")
        if radius < 1:
            raise ValueError(f"attention.radius: must be >= 1, got {radius}")
        super().__init__(dim, num_heads, **kwargs)
        self.suppression_mode = mode
        self.radius = radius
        size = 2 * radius + 1
        channels = num_heads if mode == "token_conv" else 1
        self.kernel = nn.Parameter(torch.empty(channels, 1, size, size))
        nn.init.uniform_(self.kernel, -1.0 / size, 1.0 / size)

    def suppress(self, scores: torch.Tensor, ctx: AttentionContext | None) -> torch.Tensor:
        """The edited scores ``S'`` for scores ``(B, heads, N, N)``."""
        r = self.radius
        if self.suppression_mode == "token_conv":
            return scores - F.conv2d(scores, self.kernel.to(scores.dtype), padding=r, groups=self.num_heads)
        if ctx is None:
            raise ValueError("grid suppression needs an AttentionContext with the patch grid")
        (gh, gw), p = ctx.grid, ctx.num_prefix
        B, H, N, _ = scores.shape
        # The centre tap taken out by subtraction (no item assignment: a traced graph holds it).
        kernel = (self.kernel - F.pad(self.kernel[..., r : r + 1, r : r + 1], (r, r, r, r))).to(scores.dtype)
        rows = scores[:, :, p:, :].reshape(B, H, gh, gw, N).permute(0, 1, 4, 2, 3).reshape(-1, 1, gh, gw)
        neighbours = F.conv2d(rows, kernel, padding=r).view(B, H, N, gh, gw)
        neighbours = neighbours.permute(0, 1, 3, 4, 2).reshape(B, H, gh * gw, N)
        return torch.cat((scores[:, :, :p], scores[:, :, p:] - neighbours), dim=2)

    def _attend(self, q, k, v, ctx, dropout_p, need_weights):
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        out, probs = attend_scores(self.suppress(scores, ctx), v, dropout_p=dropout_p)
        return out, probs if need_weights else None

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"kernel"}

    def extra_repr(self) -> str:
        return f"suppression_mode={self.suppression_mode}, radius={self.radius}"


def differential_lambda_init(layer_index: int) -> float:
    """Differential Transformer's depth-dependent ``lambda_init = 0.8 - 0.6 exp(-0.3 l)`` for the
    0-based layer index ``l`` (0.2 for the first layer, about 0.78 for the twelfth)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


@register_attention("diff")
class DifferentialAttention(nn.Module):
    """Differential attention (Ye et al. 2024), optionally with a per-query entropy factor (V6).

    q and k of each head are split into two sub-heads of ``head_dim / 2`` (sub-heads ``2h`` and
    ``2h+1`` of the ``dim`` channels); ``A1``, ``A2`` are their softmax maps (scale
    ``1/sqrt(head_dim/2)``) and the head output is
    ``RMSNorm((A1 - lambda A2) v_h) * (1 - lambda_init)``, computed as ``A1 v - lambda (A2 v)`` with one
    SDPA call over both maps (q and k zero-padded to ``head_dim``). ``lambda`` by ``lambda_mode``:

    * ``learned`` (plain DiffAttn): ``exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init``, one scalar per
      layer, four vectors of ``head_dim / 2`` initialised N(0, 0.1^2);
    * ``replace``: the per-query factor (the normalised entropy), no lambda vectors;
    * ``scale``: the learned scalar times the factor.

    The factor by ``entropy_source``: ``pixels``, the luminance entropy of each query's patch
    (:func:`patch_luminance_entropy`; the CLS query gets the image's mean; ``entropy_mean`` and
    ``entropy_std`` undo the input normalisation), computed once per forward for all layers;
    ``tokens``, the entropy of the softmax over each token's channels as it enters the block
    (:func:`token_entropy`); ``attention``, the normalised entropy of each query's ``A1`` row
    (``/ ln N``, per head), for which ``A1`` is materialised. The mean factor goes to
    ``ctx.stats["entropy"]`` once per forward. The RMSNorm gain (``head_dim``) is shared by
    the heads. With ``need_weights`` the weights returned are ``{"": A1 - lambda A2, "softmax1": A1,
    "softmax2": A2}`` (the first one's rows sum to ``1 - lambda``, not 1); the mean lambda of each call
    goes to ``ctx.stats["lambda"]`` when the caller asked for stats. ``rope`` (which must be null),
    ``rope_theta`` and ``seed_init`` (the seed's init of this layer is B0's) are taken as every layer of
    the backbone takes them, so that ``model.net.attention._target_=diff`` works on any ViT's node.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_index: int = 0,
        lambda_mode: str = "learned",
        entropy_source: str = "pixels",
        entropy_mean: tuple[float, ...] = IMAGENET_MEAN,
        entropy_std: tuple[float, ...] = IMAGENET_STD,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
        rope: str | None = None,
        rope_theta: float | None = None,
        seed_init: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if (dim // num_heads) % 2 != 0:
            raise ValueError(f"differential attention needs an even head dim, got {dim // num_heads}")
        if lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"attention.lambda_mode: must be one of {', '.join(LAMBDA_MODES)}, got {lambda_mode!r}")
        if entropy_source not in ENTROPY_SOURCES:
            raise ValueError(f"attention.entropy_source: must be one of {', '.join(ENTROPY_SOURCES)}, got {entropy_source!r}")
        if len(entropy_mean) != len(entropy_std):
            raise ValueError("attention.entropy_mean: needs as many values as entropy_std (one per input channel)")
        if rope is not None:
            raise ValueError(f"attention.rope: rope={rope} does not combine with differential attention")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sub_dim = self.head_dim // 2
        self.lambda_mode = lambda_mode
        self.entropy_source = entropy_source
        self.entropy_mean = tuple(float(m) for m in entropy_mean)
        self.entropy_std = tuple(float(s) for s in entropy_std)
        self.layer_index = layer_index
        self.seed_init = seed_init  # the seed's init of this layer is B0's
        self.lambda_init = differential_lambda_init(layer_index)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if lambda_mode != "replace":
            self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
                nn.Parameter(torch.empty(self.sub_dim).normal_(0.0, 0.1)) for _ in range(4)
            )

    def learned_lambda(self) -> torch.Tensor:
        return (
            torch.exp((self.lambda_q1 * self.lambda_k1).sum().float())
            - torch.exp((self.lambda_q2 * self.lambda_k2).sum().float())
            + self.lambda_init
        )

    def _lambda(self, ctx: AttentionContext | None, a1: torch.Tensor | None, B: int, N: int) -> torch.Tensor:
        """``lambda`` broadcastable to ``(B, heads, N, 1)``."""
        if self.lambda_mode == "learned":
            return self.learned_lambda().view(1, 1, 1, 1)
        if self.entropy_source == "attention":
            factor = -(a1.float() * a1.float().clamp_min(1e-12).log()).sum(-1, keepdim=True) / math.log(N)
        else:
            factor = self.modulation(ctx).float().view(B, 1, N, 1)
        return factor if self.lambda_mode == "replace" else self.learned_lambda() * factor

    def modulation(self, ctx: AttentionContext | None) -> torch.Tensor:
        """The per-query factor ``(B, N)`` of the ``pixels`` and ``tokens`` sources."""
        if ctx is None:
            raise ValueError(f"lambda_mode={self.lambda_mode} needs an AttentionContext")
        if self.entropy_source == "pixels":
            return ctx.once("pixel_entropy", lambda: self._pixel_modulation(ctx))
        if ctx.block_input is None:
            raise ValueError(f"lambda_mode={self.lambda_mode} needs the block input in the AttentionContext")
        factor = token_entropy(ctx.block_input)
        if self.layer_index == 0:
            ctx.record("entropy", factor.mean())
        return factor

    def _pixel_modulation(self, ctx: AttentionContext) -> torch.Tensor:
        if ctx.images is None:
            raise ValueError(f"lambda_mode={self.lambda_mode} needs the images in the AttentionContext")
        ent = patch_luminance_entropy(ctx.images, ctx.patch_size, self.entropy_mean, self.entropy_std)
        factor = torch.cat((ent.mean(1, keepdim=True), ent), dim=1)  # CLS gets the image mean
        ctx.record("entropy", factor.mean())
        return factor

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, ctx: AttentionContext | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = _split_heads(q, 2 * self.num_heads), _split_heads(k, 2 * self.num_heads)
        v = _split_heads(v, self.num_heads)
        q1, q2, k1, k2 = q[:, 0::2], q[:, 1::2], k[:, 0::2], k[:, 1::2]
        dropout_p = self.attn_drop if self.training else 0.0
        scale = self.sub_dim**-0.5
        a1 = a2 = None
        if need_weights or (self.lambda_mode != "learned" and self.entropy_source == "attention"):
            out1, a1 = attend(q1, k1, v, dropout_p=dropout_p, scale=scale, need_weights=True)
            out2, a2 = attend(q2, k2, v, dropout_p=dropout_p, scale=scale, need_weights=need_weights)
        else:
            # One SDPA call for both maps: q/k zero-padded to the width of v (the dot products are
            # unchanged), so the fused kernels that need equal head dims apply.
            pad = self.head_dim - self.sub_dim
            qq = F.pad(torch.cat((q1, q2), dim=1), (0, pad))
            kk = F.pad(torch.cat((k1, k2), dim=1), (0, pad))
            out, _ = attend(qq, kk, torch.cat((v, v), dim=1), dropout_p=dropout_p, scale=scale)
            out1, out2 = out.chunk(2, dim=1)
        lam = self._lambda(ctx, a1, B, N)
        out = out1 - lam.to(out1.dtype) * out2
        out = self.norm(out) * (1.0 - self.lambda_init)
        if ctx is not None:
            ctx.record("lambda", lam.mean())
        weights = None
        if need_weights:
            weights = {"": a1 - lam.to(a1.dtype) * a2, "softmax1": a1, "softmax2": a2}
        return self.proj_drop(self.proj(_merge_heads(out))), weights

    @torch.no_grad()
    def init_weights(self) -> None:
        """B0's init of the projections (:func:`init_projections`); the seed's init is the same."""
        init_projections(self.qkv, self.proj)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.startswith("lambda_")}

    def attention_maps(self, weights: dict[str, torch.Tensor], **layout: Any) -> dict[str, AttentionMap]:
        """``A1 - lambda A2`` (no distribution: its rows sum to ``1 - lambda`` and may hold negative
        weights, so it is shown, not measured) and its two softmax maps."""
        return {
            "": TokenMap(weights[""], **{**layout, "dim": None, "measure": False}),
            "softmax1": TokenMap(weights["softmax1"], **layout),
            "softmax2": TokenMap(weights["softmax2"], **layout),
        }

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, lambda_mode={self.lambda_mode}, lambda_init={self.lambda_init:.4f}"


@fx_leaf
def patch_luminance_entropy(
    images: torch.Tensor,
    patch_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    levels: int = 256,
) -> torch.Tensor:
    """Normalised Shannon entropy of the luminance histogram of every patch, ``(B, patches)`` in
    raster order, in ``[0, 1]``: undo the normalisation (``mean``, ``std``), clamp to [0, 1], take
    ``Y = 0.299 R + 0.587 G + 0.114 B`` (the channel mean for other channel counts), quantise to
    ``levels`` levels, histogram each ``patch_size x patch_size`` patch into ``levels`` bins,
    ``H = -sum p ln p`` (``0 ln 0 = 0``), divided by ``ln levels``. Without gradients; a ``torch.fx``
    leaf (it branches on the channel count and sizes its histogram by the image size)."""
    if images.shape[1] != len(mean):
        raise ValueError(
            f"attention.entropy_mean: {len(mean)} values for {images.shape[1]}-channel images; "
            "give one per input channel (and as many entropy_std)"
        )
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        x = images.float()
        mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x * std_t + mean_t).clamp(0.0, 1.0)
        if x.shape[1] == 3:
            y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        else:
            y = x.mean(1)
        q = torch.round(y * (levels - 1)).long().clamp(0, levels - 1)  # (B, H, W)
        B, H, W = q.shape
        p = patch_size
        q = q.view(B, H // p, p, W // p, p).permute(0, 1, 3, 2, 4).reshape(B, (H // p) * (W // p), p * p)
        counts = torch.zeros(B, q.shape[1], levels, device=x.device)
        counts.scatter_add_(2, q, torch.ones_like(q, dtype=torch.float32))
        prob = counts / (p * p)
        ent = -(prob * prob.clamp_min(1e-12).log()).sum(-1)
        return ent / math.log(levels)


@fx_leaf
def token_entropy(x: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of ``softmax`` over the channels of each token: ``(B, N, C) -> (B, N)``, / ln C
    (a ``torch.fx`` leaf: ``ln C`` is a Python number of the input's width)."""
    logp = torch.log_softmax(x.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(x.shape[-1])


# torch.fx.symbolic_trace keeps these whole where this module calls them (timm's tracer reads fx_leaf's list).
torch.fx.wrap("alibi_bias_2d")
torch.fx.wrap("patch_luminance_entropy")
torch.fx.wrap("predecessor_mask")
torch.fx.wrap("token_entropy")
