"""One switch for fast inference: :func:`prepare_for_inference` (``hardware.inference``, ``--inference``).

Training needs what inference does not: BatchNorm's running statistics, dropout, autograd. An
inference-only copy of a network can drop them and run cheaper kernels that compute the same logits:

- ``eager``: the network as it trains, in eval mode.
- ``fused``: a copy with every BatchNorm that follows a convolution folded into that convolution's
  weights and bias, plus whatever the network itself folds in ``fuse_for_inference()`` (a method a
  network may define; it edits the copy in place). Same logits within float32 rounding.
- ``compiled``: ``fused``, then ``torch.compile`` (inductor). The first call compiles (seconds to
  minutes); it pays off for long evaluations, not for one batch.

The copy is for inference only: it has no BatchNorm statistics to update, so it must not be trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

INFERENCE_MODES = ("eager", "fused", "compiled")


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every ``BatchNorm`` that directly follows a ``Conv2d`` inside an ``nn.Sequential`` into
    that convolution (in place; the BatchNorm becomes ``Identity``). Returns how many were folded."""
    folded = 0
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


@torch.no_grad()
def fold_affine_into_linear(linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Rewrite ``linear`` in place so that on ``x`` it gives what it gave on ``scale * x + shift``, the
    per-feature affine map in front of it (a LayerNorm's affine, an eval BatchNorm):
    ``W <- W diag(scale)``, ``c <- W shift + c``. The caller then drops that affine map."""
    bias = linear.weight @ shift + (linear.bias if linear.bias is not None else 0.0)
    linear.weight.mul_(scale)
    if linear.bias is None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    else:
        linear.bias.copy_(bias)


@torch.no_grad()
def prepare_for_inference(net: nn.Module, mode: str = "fused", compile_backend: str = "inductor") -> nn.Module:
    """An eval-mode network for inference in ``mode`` (module docstring); ``eager`` returns ``net``
    itself in eval mode, the other modes a copy (``net`` is left as it was). ``compile_backend`` is
    ``torch.compile``'s backend in ``compiled`` mode."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode {mode!r}: use one of {', '.join(INFERENCE_MODES)}")
    if mode == "eager":
        return net.eval()
    fast = copy.deepcopy(net).eval()
    fold_batchnorm(fast)
    fuse = getattr(fast, "fuse_for_inference", None)
    if callable(fuse):
        fuse()
    for p in fast.parameters():
        p.requires_grad_(False)
    if mode == "compiled":
        fast = torch.compile(fast, backend=compile_backend)
    return fast


class _RecipeLayout(nn.Module):
    """Feeds the network its inputs in the memory layout its recipe trains with."""

    def __init__(self, net: nn.Module, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.net, self.memory_format = net, memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))


def inference_network(module: nn.Module, mode: str = "eager") -> nn.Module:
    """What ``vitlab.evaluate`` and ``vitlab-predict`` call on image batches: a family module itself
    (``eager``), or the :func:`prepare_for_inference` copy of its network, fed in the layout of the
    module's ``recipe.channels_last`` as the module's own forward does."""
    if mode == "eager":
        return module.eval()
    recipe = getattr(module, "recipe", None)
    layout = torch.channels_last if getattr(recipe, "channels_last", False) else torch.contiguous_format
    return _RecipeLayout(prepare_for_inference(getattr(module, "net", module), mode), layout).eval()
