"""The part of timm's model API that is the same for every vitlab network, written once: the
forward through ``forward_features`` and ``forward_head``, the classifier and gradient checkpointing.

A network mixes in :class:`ClassifierContract` and says what differs: which ``global_pool`` values its
head reads (``head_pools``), how wide the head's input is (``head_in_features``, default
``num_features``) and how a new head starts (``init_head``, default PyTorch's). It keeps its head in
``self.head`` and reads ``self.grad_checkpointing`` in its forward.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassifierContract"]


class ClassifierContract:
    #: The ``global_pool`` values :meth:`reset_classifier` takes (``None`` always: keep the pooling).
    head_pools: tuple[str, ...] = ()

    @property
    def head_in_features(self) -> int:
        """Width of what the head reads."""
        return self.num_features

    def init_head(self, head: nn.Linear) -> None:
        """How a new head starts: PyTorch's default init unless the family says otherwise."""

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits; with ``return_aux`` ``(logits, aux)``, the figures besides the logits that
        ``forward_features(x, return_aux=True)`` gives (a network without any defines its own forward)."""
        if return_aux:
            tokens, aux = self.forward_features(x, return_aux=True)
            return self.forward_head(tokens), aux
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0 = none: the pooled features are the output)."""
        if global_pool is not None and global_pool not in self.head_pools:
            raise ValueError(
                f"{type(self).__name__} pools with {' or '.join(map(repr, self.head_pools))}; "
                f"global_pool={global_pool!r} is not supported"
            )
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_in_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self.init_head(self.head)
