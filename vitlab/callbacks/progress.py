"""Progress bar that suits where the output goes."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from vitlab.errors import ConfigError


class _TQDMBar(TQDMProgressBar):
    """Lightning's tqdm bar, epochs counted from 1 as in checkpoint names and metrics.json."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # Lightning's hook with the description counted from 1 (the bar is made with leave=False, so
        # one bar serves every epoch).
        bar = self.train_progress_bar
        bar.reset()
        bar.total, bar.initial = convert_inf(self.total_train_batches), 0
        bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class _RichBar(RichProgressBar):
    """Lightning's rich bar, epochs counted from 1 as in checkpoint names and metrics.json (the
    description is the one place rich's bar names the epoch)."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"


def make_progress_bar(kind: str = "auto", refresh_rate: int = 1, file_refresh_rate: int = 100) -> ProgressBar:
    """``rich`` for a terminal, ``tqdm`` otherwise: rich redraws make SLURM and CI logs unreadable,
    so when output is not a TTY (``kind=auto``) a plain bar refreshed every ``file_refresh_rate``
    batches is used instead."""
    if kind == "auto":
        kind = "rich" if sys.stdout.isatty() else "tqdm"
    if kind == "rich":
        return _RichBar(refresh_rate=refresh_rate)
    if kind == "tqdm":
        return _TQDMBar(refresh_rate=file_refresh_rate if not sys.stdout.isatty() else refresh_rate)
    raise ConfigError(f"callbacks.progress_bar.kind: unknown progress bar {kind!r}; use auto, rich or tqdm")
