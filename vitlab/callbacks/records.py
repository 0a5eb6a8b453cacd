"""Where callbacks leave figures for the run's ``metrics.json``.

A callback calls :func:`record` with the module it measured; ``vitlab.train`` merges
``module.run_metrics`` into ``metrics.json`` after fitting (later records of a key replace earlier ones).
"""

from __future__ import annotations

from typing import Any

import lightning as L


def record(pl_module: L.LightningModule, **values: Any) -> None:
    if "run_metrics" not in pl_module.__dict__:
        pl_module.run_metrics = {}
    pl_module.run_metrics.update(values)


def log_once(trainer: L.Trainer, metrics: dict[str, float], step: int = 0) -> None:
    """Straight to every logger (outside a LightningModule hook, where ``self.log`` is not allowed)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
