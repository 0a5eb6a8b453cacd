"""The QAViT family: per-branch attention maps, fusion weights and the bank's norm in the logs."""

from __future__ import annotations

import torch

from vitlab.families.classifier import ImageClassifier
from vitlab.models.qavit import BRANCHES


class QAViTClassifier(ImageClassifier):
    """QAViT networks (``vitlab.models.qavit``).

    ``attention_maps(images)`` gives every branch's weights per block (``"blocks.i.window"``,
    ``".dilated"``, ``".channel_group"``, and ``".bank"``, the cross-attention to the bank); all are
    softmax rows over their last axis, so the shared per-validation check tests them all.

    Logged per epoch: the fusion weights ``softmax(alpha)`` of every block (``fusion/blocks.i.<branch>``)
    and their mean over blocks (``fusion/<branch>``), to see whether the redundant scalars move at
    all; and ``train/bank_norm``, the largest bank-token norm at the end of the forward
    (epoch mean; the network returns it from ``forward_with_aux``, :class:`ImageClassifier` logs it), which must stay bounded with the functional bank and grows with the faithful one.
    """

    #: Images of the first validation batch whose maps the softmax check computes: all four branches
    #: of every block for a full batch of 224 px images would take gigabytes (the channel-group maps
    #: alone are groups x heads x N x (N + S) per image and block).
    attention_check_images: int = 8

    def _check_attention(self, images: torch.Tensor) -> None:
        super()._check_attention(images[: self.attention_check_images])

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        weights = self.net.fusion_weights()  # (depth, branches)
        for name, value in zip(BRANCHES, weights.mean(0)):
            self.log(f"fusion/{name}", value)
        for i, row in enumerate(weights):
            for name, value in zip(BRANCHES, row):
                self.log(f"fusion/blocks.{i}.{name}", value)
