"""Pieces shared by the QAViT attention branches: the kernel dispatch (optional flash-attn) and the
Linformer-style sequence compression.

Every branch calls :func:`branch_attend`, which is :func:`vitlab.layers.attention.attend` (PyTorch SDPA)
unless the optional ``flash-attn`` package can take the call: it must be importable, the tensors on
CUDA in fp16/bf16, no mask, no weights asked for, and a head dim flash supports. The choice depends
only on the tensors, never on train/eval mode, so training and evaluation use the same kernel
family (the seed used flash only in training).

Where :func:`attend` runs in plain ops on CPU (attention dropout, or weights asked for), it holds the
whole ``(batch, heads, N_q, N_k)`` score matrix and makes about ten passes over it (softmax, dropout
mask, their gradients). The channel-group branch's matrix is ~80 MB at QAViT-Tiny's shapes: every pass
then streams from memory, and every fresh allocation of that size is a new ``mmap`` whose pages fault
in one by one. :func:`branch_attend` therefore splits such calls along the batch into pieces of at
most :data:`CPU_SCORE_CHUNK` score elements; the pieces are independent, so the result is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.layers.attention import attend, takes_cpu_dropout_path
from vitlab.layers.tracing import fx_leaf, is_tracing

#: Score elements per piece of a CPU plain-ops attention call (module docstring): 4 MiB in fp32, a
#: few times a core's L2 and well under glibc's largest mmap threshold (32 MiB).
CPU_SCORE_CHUNK = 1 << 20

try:  # the `flash` extra; CUDA only
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    _flash_attn_func = None


def flash_available() -> bool:
    """Whether the flash-attn package imported and a CUDA device is visible."""
    return _flash_attn_func is not None and torch.cuda.is_available()


def _flash_can_run(q: torch.Tensor, attn_mask: torch.Tensor | None, need_weights: bool) -> bool:
    return (
        _flash_attn_func is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and attn_mask is None
        and not need_weights
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
    )


def branch_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    attn_mask: torch.Tensor | None = None,
    use_flash: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`attend` on ``(B, heads, N, head_dim)`` tensors, through flash-attn when ``use_flash`` is
    set and the call qualifies, in batch pieces where a CPU call runs in plain ops (see the module
    docstring); same result within fp16 tolerance."""
    if use_flash and _flash_can_run(q, attn_mask, need_weights):
        # flash-attn wants (B, N, heads, head_dim) and one dtype for q, k and v.
        out = _flash_attn_func(
            q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2), dropout_p=dropout_p
        )
        return out.transpose(1, 2), None
    # One call where nothing is materialised or a graph is recorded (its batch size is symbolic).
    size = _cpu_piece_size(q, k, dropout_p, need_weights) if cpu_plain_ops(q, dropout_p, need_weights) else None
    if size is None or size >= q.shape[0]:
        return attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, attn_mask=attn_mask)
    per_sample_mask = attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[0] > 1
    masks = attn_mask.split(size) if per_sample_mask else [attn_mask] * -(-q.shape[0] // size)
    results = [
        attend(qi, ki, vi, dropout_p=dropout_p, need_weights=need_weights, attn_mask=mi)
        for qi, ki, vi, mi in zip(q.split(size), k.split(size), v.split(size), masks)
    ]
    out = torch.cat([o for o, _ in results])
    return out, torch.cat([p for _, p in results]) if need_weights else None


def cpu_plain_ops(x: torch.Tensor, dropout_p: float, need_weights: bool) -> bool:
    """Whether :func:`attend` computes a call on tensors like ``x`` in plain ops on CPU (module docstring);
    never while a graph is recorded, which holds one call."""
    return not is_tracing() and x.device.type == "cpu" and (need_weights or takes_cpu_dropout_path(x, dropout_p))


def _cpu_piece_size(q: torch.Tensor, k: torch.Tensor, dropout_p: float, need_weights: bool) -> int:
    """Samples per piece of a :func:`branch_attend` call (the whole batch: no split)."""
    if not cpu_plain_ops(q, dropout_p, need_weights):
        return q.shape[0]
    scores_per_sample = q[0].numel() // q.shape[-1] * k.shape[-2]  # heads * N_q * N_k
    return min(q.shape[0], max(1, CPU_SCORE_CHUNK // scores_per_sample))


@fx_leaf
def check_sequence_length(k: torch.Tensor, length: int) -> torch.Tensor:
    """``k`` (``(..., n, D)``), once ``n`` is known to fit a compression made for ``length`` tokens. A
    ``torch.fx`` leaf: the check runs as one call of a traced network, not as a branch of its graph."""
    if k.shape[-2] > length:
        raise ValueError(f"sequence of {k.shape[-2]} tokens is longer than the compression's {length}")
    return k


torch.fx.wrap("check_sequence_length")


class SequenceCompression(nn.Module):
    """Linformer's learned projections along the sequence axis: ``K' = E_K^T K``, ``V' = E_V^T V``,
    ``(..., length, D) -> (..., k, D)``, shared across heads and batch (Xavier-uniform init).

    Inputs shorter than ``length`` are zero-padded first (the seed's behaviour, needed only for its
    fixed-length faithful mode); longer ones are an error.
    """

    def __init__(self, length: int, k: int) -> None:
        super().__init__()
        self.length, self.k = length, k
        self.e_k = nn.Parameter(torch.empty(length, k))
        self.e_v = nn.Parameter(torch.empty(length, k))
        nn.init.xavier_uniform_(self.e_k)
        nn.init.xavier_uniform_(self.e_v)

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = check_sequence_length(k, self.length)
        n = k.shape[-2]
        e_k, e_v = self.e_k[:n].to(k.dtype), self.e_v[:n].to(v.dtype)  # padding with zeros == dropping rows of E
        return torch.einsum("...nd,nk->...kd", k, e_k), torch.einsum("...nd,nk->...kd", v, e_v)
