"""Per-pixel dynamic 3x3 kernels (OutGridViT's "outlooker").

Each pixel predicts, for each head, a softmax over the k x k taps of its own neighbourhood; the
channels of that head are mixed with that kernel (zero-padded at the border). It resembles
involution; unlike VOLO's outlook attention there is no k^4 weight tensor, no fold and no pooling.

The tap contraction is element-wise, which ``torch.utils.flop_counter`` does not see; its
``C * H * W * k^2`` MACs per image (0.3 % of OutGrid 7M's total at 32 px) are counted by the formula
registered with :func:`vitlab.measure.register_module_flops` below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp
from torch import nn

from vitlab.layers.tracing import is_tracing
from vitlab.measure import register_module_flops


def _tap_regions(kernel_size: int, height: int, width: int):
    """For every tap but the centre: ``(tap, target, source)``, index tuples of the output pixels whose
    neighbour at the tap's offset lies inside the ``height x width`` map, and of those neighbours."""
    r = kernel_size // 2
    for tap in range(kernel_size**2):
        dy, dx = tap // kernel_size - r, tap % kernel_size - r
        if dy == dx == 0:
            continue
        rows, cols = max(0, height - abs(dy)), max(0, width - abs(dx))
        target = (..., slice(max(0, -dy), max(0, -dy) + rows), slice(max(0, -dx), max(0, -dx) + cols))
        source = (..., slice(max(0, dy), max(0, dy) + rows), slice(max(0, dx), max(0, dx) + cols))
        yield tap, target, source


class _TapMix(torch.autograd.Function):
    """``out[b, h, c, y, x] = sum_t weights[b, h, t, y, x] * values[b, h, c, y + dy_t, x + dx_t]`` over
    the k x k taps ``t`` (offsets ``dy_t, dx_t`` in ``[-k//2, k//2]``), values outside the map being zero.

    Each tap is one multiply-add between the part of the map whose neighbour at that offset lies
    inside it and the shifted values there, so the zero border is never materialised: no padded copy
    of the values in the forward, no padded gradient buffer in the backward. Written out with its
    backward because autograd's own would allocate a zero-filled, values-sized gradient for every
    tap's slice; here both gradients are accumulated tap by tap in place."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, values: torch.Tensor, kernel_size: int) -> torch.Tensor:
        centre = kernel_size**2 // 2
        out = torch.mul(weights[:, :, centre : centre + 1], values, out=torch.empty_like(values))
        for tap, target, source in _tap_regions(kernel_size, *values.shape[-2:]):
            out[target].addcmul_(weights[:, :, tap : tap + 1][target], values[source])
        ctx.save_for_backward(weights, values)
        ctx.kernel_size = kernel_size
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, values = ctx.saved_tensors
        k = ctx.kernel_size
        centre = k**2 // 2
        if grad.stride() != values.stride():
            # The in-place accumulations below are several times slower when the gradient's memory
            # layout differs from the values' (e.g. NCHW against channels-last).
            grad = torch.empty_like(values).copy_(grad)
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            # Zero where a tap's neighbour falls outside the map: that weight multiplied a zero.
            grad_weights = torch.zeros_like(weights)
            product = torch.empty_like(values)  # one scratch buffer for every tap's products
            torch.sum(torch.mul(grad, values, out=product), dim=2, out=grad_weights[:, :, centre])
            for tap, target, source in _tap_regions(k, *values.shape[-2:]):
                products = torch.mul(grad[target], values[source], out=product[target])
                torch.sum(products, dim=2, out=grad_weights[:, :, tap][target])
        if ctx.needs_input_grad[1]:
            grad_values = torch.mul(grad, weights[:, :, centre : centre + 1], out=torch.empty_like(values))
            for tap, target, source in _tap_regions(k, *values.shape[-2:]):
                grad_values[source].addcmul_(grad[target], weights[:, :, tap : tap + 1][target])
        return grad_weights, grad_values, None


def tap_mix(weights: torch.Tensor, values: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:class:`_TapMix` for training and eager inference; the same sum in plain ops on zero-padded
    values while a graph is recorded (:func:`~vitlab.layers.tracing.is_tracing`): ``torch.export``,
    ``torch.onnx.export``, ``torch.fx`` and tracing cannot hold a custom autograd function (its in-place
    ``out=`` accumulations have no export form, and its loop runs over the map's size, which a
    symbolic trace does not know), and under ``torch.compile`` inductor fuses the k*k shifted
    multiply-adds into one loop."""
    if is_tracing():
        H, W = values.shape[-2:]
        k, pad = kernel_size, kernel_size // 2
        padded = F.pad(values, (pad, pad, pad, pad))
        return sum(weights[:, :, t : t + 1] * padded[..., t // k : t // k + H, t % k : t % k + W] for t in range(k * k))
    return _TapMix.apply(weights, values, kernel_size)


class DynamicKernelMixer(nn.Module):
    """``(B, C, H, W) -> (B, C, H, W)`` with a predicted per-pixel, per-head k x k kernel."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by outlook_heads {num_heads}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        # Channel layout of the logits is head-major: channel head * k^2 + tap (row-major taps).
        self.kernel_logits = nn.Conv2d(dim, num_heads * kernel_size**2, 1)
        self.value = nn.Conv2d(dim, dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, C, H, W = x.shape
        h, k = self.num_heads, self.kernel_size
        weights = self.kernel_logits(x).view(B, h, k * k, H, W).softmax(dim=2)
        mixing = self.attn_drop(weights)
        values = self.value(x).view(B, h, C // h, H, W)
        # One multiply-add per tap on shifted views of the values: no k*k-times unfolded copy
        # (im2col / col2im), and no per-pixel batched matmul in the backward (the profile's hot spots).
        out = tap_mix(mixing, values, k)
        return self.proj_drop(self.proj(out.reshape(B, C, H, W))), weights if need_weights else None


@register_module_flops(DynamicKernelMixer)
def _tap_mix_flops(mixer: DynamicKernelMixer, inputs: tuple[torch.Tensor, ...]) -> int:
    # One multiply-add per tap, channel and pixel; the 1x1 convolutions around it are counted by torch.
    B, C, H, W = inputs[0].shape
    return 2 * mixer.kernel_size**2 * B * C * H * W


class DynamicKernelBlock(nn.Module):
    """Pre-norm ``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on NCHW maps, with drop-path on both."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 3,
        mlp_ratio: float = 2.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.mixer = DynamicKernelMixer(dim, num_heads, kernel_size, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, use_conv=True)  # 1x1 convs
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = self.mixer(self.norm1(x), need_weights)
        # Residual adds in place on the fresh branch outputs, not on x (LayerNorm's backward reads x).
        x = self.drop_path1(out).add_(x)
        x = self.drop_path2(self.mlp(self.norm2(x))).add_(x)
        return x, weights
