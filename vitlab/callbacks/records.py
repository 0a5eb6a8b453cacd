"""Figures a callback measured, for the run's ``metrics.json``.

A measuring callback keeps its figures in its own :class:`RunRecord` (its ``record`` attribute);
after fitting, ``vitlab.train`` gathers every callback's record with :func:`collect_records`. Nothing
is written onto the LightningModule, and a callback that needs another's figure (the throughput
callback needs the FLOPs) asks that callback for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning as L


class RunRecord(Mapping[str, Any]):
    """``metrics.json`` keys and values one callback measured; a later :meth:`put` of a key replaces
    the earlier value (the last epoch's images/s win)."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def put(self, **values: Any) -> None:
        self._values.update(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"RunRecord({self._values!r})"


def collect_records(callbacks: Iterable[Any]) -> dict[str, Any]:
    """The records of every callback that keeps one, merged in callback order."""
    merged: dict[str, Any] = {}
    for callback in callbacks:
        record = getattr(callback, "record", None)
        if isinstance(record, RunRecord):
            merged.update(record)
    return merged


def log_once(trainer: L.Trainer, metrics: dict[str, float], step: int = 0) -> None:
    """Straight to every logger (outside a LightningModule hook, where ``self.log`` is not allowed)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
