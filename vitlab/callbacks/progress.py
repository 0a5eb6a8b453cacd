"""Progress bar that suits where the output goes."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from vitlab.errors import ConfigError


def make_progress_bar(kind: str = "auto", refresh_rate: int = 1, file_refresh_rate: int = 100) -> ProgressBar:
    """``rich`` for a terminal, ``tqdm`` otherwise: rich redraws make SLURM and CI logs unreadable,
    so when output is not a TTY (``kind=auto``) a plain bar refreshed every ``file_refresh_rate``
    batches is used instead."""
    if kind == "auto":
        kind = "rich" if sys.stdout.isatty() else "tqdm"
    if kind == "rich":
        return RichProgressBar(refresh_rate=refresh_rate)
    if kind == "tqdm":
        return TQDMProgressBar(refresh_rate=file_refresh_rate if not sys.stdout.isatty() else refresh_rate)
    raise ConfigError(f"callbacks.progress_bar.kind: unknown progress bar {kind!r}; use auto, rich or tqdm")
