"""Lightning's learning-rate monitor, quiet when the run has no logger."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor as _LearningRateMonitor


class LearningRateMonitor(_LearningRateMonitor):
    """Logs every parameter group's LR (``lr-AdamW/pg1``, ...). Lightning's own refuses to start
    without a logger; with ``~logger`` (nothing to log to) this one simply does nothing."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
