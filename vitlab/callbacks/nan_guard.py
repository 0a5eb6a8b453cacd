"""Stop (or skip the step) when the loss or the gradients stop being finite."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vitlab.errors import ConfigError, VitlabError

MODES = ("stop", "skip")


class NonFiniteLossError(VitlabError):
    """The loss or the gradients became NaN or infinite; the message says where and what to try."""


class NaNGuard(Callback):
    """Watches every training step for a NaN/inf loss and, before the optimizer step, NaN/inf gradients.

    ``mode="stop"`` (default) ends the run with one line naming the step and the last good checkpoint;
    nothing is saved after the bad step, so ``last.ckpt`` keeps the weights from before it.
    ``mode="skip"`` drops the step's gradients instead (the optimizer leaves the weights alone) and
    counts it; after ``max_skips`` skipped steps in a row the run stops as in ``stop`` mode.

    Under fp16 mixed precision the gradient scaler already skips steps with inf gradients (that is
    how it finds its scale), so there only the loss is checked.
    """

    def __init__(self, mode: str = "stop", check_grads: bool = True, max_skips: int = 10) -> None:
        if mode not in MODES:
            raise ConfigError(f"callbacks.nan_guard.mode: unknown mode {mode!r}; use stop or skip")
        if max_skips < 1:
            raise ConfigError(f"callbacks.nan_guard.max_skips: must be >= 1, got {max_skips}")
        self.mode = mode
        self.check_grads = check_grads
        self.max_skips = max_skips
        self.skipped_steps = 0
        self._skips_in_a_row = 0
        self._bad_loss: float | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if not torch.isfinite(value).all():
            self._bad_loss = value.item() if value.numel() == 1 else math.nan
            # With several processes, stopping one rank here would leave the others waiting in the
            # gradient all-reduce; they all decide together before the optimizer step instead.
            if self.mode == "stop" and trainer.world_size == 1:
                self._stop(trainer, f"train loss is {self._bad_loss}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        bad_loss, self._bad_loss = self._bad_loss, None
        bad_grads = False
        if self.check_grads and not _scales_fp16(trainer):
            norm = _gradient_norm(pl_module, optimizer)
            bad_grads = norm is not None and not torch.isfinite(norm).item()
        if trainer.world_size > 1:
            any_bad = trainer.strategy.reduce_boolean_decision(bad_loss is not None or bad_grads, all=False)
            if any_bad and bad_loss is None and not bad_grads:
                bad_grads = True  # another rank's loss or gradients
        if bad_loss is None and not bad_grads:
            self._skips_in_a_row = 0
            return
        what = f"train loss is {bad_loss}" if bad_loss is not None else "the gradients hold NaN/inf"
        if self.mode == "stop":
            self._stop(trainer, what)
        self._skips_in_a_row += 1
        self.skipped_steps += 1
        if self._skips_in_a_row > self.max_skips:
            self._stop(trainer, f"{what}, for {self._skips_in_a_row} steps in a row")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave parameters without a gradient untouched
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") if ckpt else ""
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"callbacks.nan_guard: {what} at epoch {trainer.current_epoch + 1}, step {trainer.global_step}; stopped and "
            f"{kept}. Lower recipe.optimizer.lr, set recipe.grad_clip, try hardware.precision=bf16-mixed or 32-true, "
            "or set callbacks.nan_guard.mode=skip"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))


def _gradient_norm(pl_module: L.LightningModule, optimizer: Any) -> torch.Tensor | None:
    # The module's own (vitlab's classifiers compute it once per step and log it); else computed here.
    if callable(getattr(pl_module, "gradient_norm", None)):
        return pl_module.gradient_norm(optimizer)
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def _scales_fp16(trainer: L.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None
