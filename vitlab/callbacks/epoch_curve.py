"""The top-1 of every validation during fit, in order, for ``metrics.json``.

Under ``protocol=seed`` the validation split is the test split, so this is the test curve the
originals reported (best and final); under ``protocol=heldout`` it is the held-out validation curve.
The curve is kept in checkpoints, so a resumed run reports the whole of it.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class EpochCurve(L.Callback):
    """Collects ``(epoch, global step, monitor)`` after every validation that is not the sanity check."""

    def __init__(self, monitor: str = "val/top1") -> None:
        self.monitor = monitor
        self.points: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs the epoch's metrics.
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        point = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                 "top1": float(trainer.callback_metrics[self.monitor])}
        # A validation of the same epoch and step again (a resumed run re-validating) replaces the first.
        self.points = [p for p in self.points if (p["epoch"], p["step"]) != (point["epoch"], point["step"])]
        self.points.append(point)

    def state_dict(self) -> dict[str, Any]:
        return {"points": [dict(p) for p in self.points]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = [dict(p) for p in state_dict.get("points", [])]

    @property
    def best(self) -> dict[str, float] | None:
        return max(self.points, key=lambda p: p["top1"]) if self.points else None
