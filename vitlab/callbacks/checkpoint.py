"""ModelCheckpoint whose every save is a temporary file renamed over the target."""

from __future__ import annotations

from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from vitlab.checkpoint import atomic_write


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best by the monitored metric, and ``last.ckpt``), except that a
    checkpoint is written to a temporary file beside its target, synced to disk and then renamed over
    it. A run killed while saving (SIGKILL, a SLURM time limit, a power cut) leaves the previous
    ``last.ckpt`` intact, so ``ckpt_path=last`` always finds a loadable file.

    ``last.ckpt`` is also refreshed after every epoch (or validation): Lightning 2.6 rewrites it only
    when a top-k checkpoint was written at the same step, so a run whose validation score stopped
    improving would resume from the last *improving* epoch and lose the ones after it.

    Every rank builds the checkpoint (it may be sharded or need collectives); rank 0 writes it.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        # Skipped when the parent already saved at this step (it sets _last_global_step_saved).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            atomic_write(filepath, lambda tmp: trainer.save_checkpoint(tmp, self.save_weights_only))
        else:
            trainer.save_checkpoint(filepath, self.save_weights_only)  # collective; writes nothing here
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
