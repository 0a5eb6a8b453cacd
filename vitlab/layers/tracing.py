"""What the layers need to know about graph capture: whether a graph is being recorded, and which
functions ``torch.fx`` keeps whole.

Some layers have two forms of one computation: an eager kernel tuned for the CPU (a cheaper dropout
mask, a custom autograd function) and the same result in plain ops that a graph can hold.
:func:`is_tracing` picks the plain form while ``torch.compile``, ``torch.fx``, ``torch.jit`` tracing
or ONNX export records the graph; eager calls never see the difference in their numbers' meaning.

A *leaf* is a function that ``torch.fx`` records as one call instead of tracing into it: the input
checks (they branch on the input's size, which a symbolic trace does not know) and helpers that build
index tables from the patch grid. The recorded call runs on the real tensors when the traced module
runs, so a traced network still checks its input. :func:`fx_leaf` registers one with timm's
``register_notrace_function`` (timm's ``create_feature_extractor`` and its tests read that list); a
module that calls the leaf also names it with ``torch.fx.wrap("name")`` at its top level, which makes
``torch.fx.symbolic_trace`` keep it whole too. ``torch.compile`` traces into leaves as into any
function: their branches on static sizes become guards, not graph breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from timm.layers import register_notrace_function

try:
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing
except ImportError:  # torch before 2.5 has only the one flag, set by torch.fx alone
    from torch.fx._symbolic_trace import is_fx_tracing as is_fx_symbolic_tracing

__all__ = ["fx_leaf", "is_tracing"]

F = TypeVar("F", bound=Callable)


def is_tracing() -> bool:
    """Whether a graph is being recorded (``torch.compile``, ``torch.fx``, ``torch.jit.trace``, ONNX
    export): layers then take their plain-op form."""
    return (
        torch.compiler.is_compiling()
        or is_fx_symbolic_tracing()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def fx_leaf(fn: F) -> F:
    """Register ``fn`` as a function ``torch.fx`` records whole (timm's notrace list)."""
    return register_notrace_function(fn)
