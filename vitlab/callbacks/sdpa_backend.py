"""Restrict ``scaled_dot_product_attention`` to one kernel for a whole fit/test (``hardware.sdpa_backend``)."""

from __future__ import annotations

import contextlib

import lightning as L
from lightning.pytorch.callbacks import Callback

from vitlab.layers.attention import sdpa_backend


class SDPABackend(Callback):
    """Enters :func:`vitlab.layers.attention.sdpa_backend` when a stage is set up and leaves it at its
    teardown. The choice is torch's process-wide setting, which also covers the backward pass
    (autograd's threads included)."""

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend
        self._active = contextlib.ExitStack()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active.close()
        self._active.enter_context(sdpa_backend(self.backend))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active.close()
