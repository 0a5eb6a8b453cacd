"""The part of timm's model API that is the same for every vitlab network, written once: the
forward through ``forward_features`` and ``forward_head``, the classifier and gradient checkpointing.

A network mixes in :class:`ClassifierContract` and says what differs: how it pools its features
(``pool``, as ``global_pool`` says; ``head_pools`` lists the values it takes), how wide the head's
input is (``head_in_features``, default ``num_features``) and how a new head starts (``init_head``,
default PyTorch's). It keeps its head in ``self.head`` (``nn.Identity`` for ``num_classes=0``: the
pooled features are the output, as in timm) and reads ``self.grad_checkpointing`` in its forward.
timm's feature API (``forward_intermediates``, ``prune_intermediate_layers``, ``feature_info``) comes
with it from :class:`~vitlab.models._features.FeatureTaps`, which says what a family adds for that.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.models._features import FeatureTaps

__all__ = ["ClassifierContract"]


class ClassifierContract(FeatureTaps):
    #: The ``global_pool`` values :meth:`reset_classifier` takes (``None`` always: keep the pooling);
    #: ``""`` keeps the unpooled tokens or feature map.
    head_pools: tuple[str, ...] = ()
    #: How :meth:`forward_head` pools the features (one of :attr:`head_pools`).
    global_pool: str = ""
    #: Whether a head applies to unpooled features (tokens: one prediction per token, as timm's ViT);
    #: a feature map ``(B, C, H, W)`` has no such head.
    head_on_tokens: bool = True

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The features ``forward_features`` gives, pooled as :attr:`global_pool` says."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (``pre_logits``), else the head's output on them."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(x, pre_logits=True)``: what a new head reads (timm's name)."""
        return self.head_in_features

    @property
    def head_in_features(self) -> int:
        """Width of what the head reads."""
        return self.num_features

    def init_head(self, head: nn.Linear) -> None:
        """How a new head starts: PyTorch's default init unless the family says otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))

    def forward_features_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``forward_features(x)`` and the figures the network has besides them (none by default)."""
        return self.forward_features(x), {}

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, aux)``: the same logits as ``forward``, and the figures besides them (detached
        scalars the training module logs per epoch as ``train/<name>``). A method of its own, so
        ``forward`` has no flag to branch on."""
        tokens, aux = self.forward_features_with_aux(x)
        return self.forward_head(tokens), aux

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0 = none: the pooled features are the output), pooling as
        ``global_pool`` says when given."""
        if global_pool is not None and global_pool not in self.head_pools:
            raise ValueError(
                f"{type(self).__name__} pools with {' or '.join(map(repr, self.head_pools))}; "
                f"global_pool={global_pool!r} is not supported"
            )
        if global_pool == "" and num_classes > 0 and not self.head_on_tokens:
            raise ValueError(f"{type(self).__name__}: global_pool='' gives the feature map, which takes no head; "
                             "use num_classes=0 for the map, or a pooling for a head")
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_in_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self.init_head(self.head)
