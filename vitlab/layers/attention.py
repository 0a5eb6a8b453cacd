"""The one attention core every vitlab family builds on.

:func:`attend` is scaled dot-product attention over ``(B, heads, N, head_dim)`` tensors. By default it
calls :func:`torch.nn.functional.scaled_dot_product_attention`, which picks the flash / memory-efficient
kernels on CUDA. Fused kernels never materialise the attention matrix, so when a caller needs the
probabilities (attention dumps, analysis, the softmax check) it asks for them with ``need_weights`` and
gets the explicit path, which computes the same thing in plain ops.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitlab.layers.dropout import Dropout, dropout
from vitlab.layers.tracing import is_tracing

# ``hardware.sdpa_backend`` / ``--sdpa-backend``: which kernel SDPA may use; auto lets torch choose.
SDPA_BACKENDS = ("auto", "flash", "efficient", "math", "cudnn")
_SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def sdpa_backend(name: str) -> contextlib.AbstractContextManager:
    """A context in which SDPA calls use only the named backend (``auto``: no restriction). The CPU
    has ``flash`` and ``math``; ``efficient`` and ``cudnn`` exist on CUDA only."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown SDPA backend {name!r}; use one of {', '.join(SDPA_BACKENDS)}")
    return contextlib.nullcontext() if name == "auto" else sdpa_kernel(_SDPA_KERNELS[name])


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention; returns ``(output, probabilities or None)``.

    ``probabilities`` are the post-softmax, pre-dropout weights of shape ``(B, heads, N_q, N_k)``.
    ``attn_mask`` (optional) is added to the scaled scores before the softmax, as in SDPA: a float
    bias broadcastable to ``(B, heads, N_q, N_k)`` (ALiBi), or a boolean mask where ``False`` hides a key.
    """
    # With dropout on CPU, SDPA falls back to its math path, whose Bernoulli mask and masked softmax
    # cost more than the attention itself; the explicit path with vitlab's cheaper mask is 1.6x
    # faster there (forward + backward at Mini-ViT's shape, bench/RESULTS.md).
    if not need_weights and not takes_cpu_dropout_path(q, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale), None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    out, probs = attend_scores(scores, v, dropout_p=dropout_p)
    return out, probs if need_weights else None


def takes_cpu_dropout_path(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether :func:`attend` computes a call with attention dropout in plain ops (on the CPU,
    while no graph is recorded; see the comment in :func:`attend`)."""
    return dropout_p > 0 and not is_tracing() and q.device.type == "cpu"


def attend_scores(
    scores: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second half of :func:`attend` for callers that edit the score matrix themselves (variants
    that cannot run on SDPA): softmax over the keys, dropout, weighted sum of ``v``. Returns
    ``(output, probabilities)``, the probabilities taken before dropout."""
    probs = torch.softmax(scores, dim=-1)
    weights = dropout(probs, dropout_p) if dropout_p > 0 else probs
    return weights @ v, probs


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence ``(B, N, dim)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout_p = self.attn_drop if self.training else 0.0
        out, probs = attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return out, probs
