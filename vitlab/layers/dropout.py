"""Dropout whose random mask is cheaper to draw on CPU.

On CPU, ``F.dropout`` draws one Bernoulli sample per element, and for the attention probabilities of
a small ViT that costs more than the attention itself: in a profile of a Mini-ViT train step
``aten::bernoulli_`` was 30 % of the CPU time. Here one 64-bit random word gives the keep/drop bits of
four elements (15 random bits each), which is about twice as fast. The drop rate is rounded to a
multiple of 1/32768 (0.1 -> 0.100006) and the kept values are scaled by the inverse of that rounded
keep rate, so the output's expectation is the input exactly, as with ``F.dropout``.

On other devices, while a graph is recorded (:func:`~vitlab.layers.tracing.is_tracing`: inductor
draws its own fused masks, a ``torch.fx`` graph holds ``F.dropout``), and for rates that do not round
to a usable multiple of 1/32768, it is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers.tracing import is_tracing

_LEVELS = 1 << 15  # random bits per element


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` in distribution; a cheaper mask on CPU (see the module notes)."""
    if not training or p == 0.0:
        return x
    threshold = round(p * _LEVELS)
    if is_tracing() or x.device.type != "cpu" or not 0 < threshold < _LEVELS:
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # uniform on [0, 2^63)
    lanes = words.view(torch.int16)[:n].view(x.shape) & (_LEVELS - 1)
    # The mask holds 0 or the keep-rate's inverse in x's dtype: one multiply forward and one
    # backward, where a boolean mask is cast to float in both and the scale is a second pass.
    scale = x.new_full((), _LEVELS / (_LEVELS - threshold))
    return x * torch.where(lanes >= threshold, scale, x.new_zeros(()))


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`dropout`; no parameters, so swapping it for an
    ``nn.Dropout`` leaves state dicts unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
