"""``metrics.json``: what a finished run reports, as one typed record.

``vitlab.train`` fills a :class:`RunMetrics` and writes it; ``vitlab.report`` reads it back with
:meth:`RunMetrics.from_json`, which checks every known key's type. A field declared with an
:class:`Averaged` column is a column of the report (mean ± std over a group's runs) with no other
edit. Keys no field names (a user's own callback's record, Lightning's extra test scores) are kept
in :attr:`RunMetrics.extra`, written back unchanged, and reach the report with ``--metric KEY``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

__all__ = ["Averaged", "RunMetrics", "averaged_columns"]


@dataclass(frozen=True)
class Averaged:
    """A report column averaged over a group's runs: ``<name>_mean/_std/_n`` in report.csv,
    ``header`` in report.md, the value times ``scale`` shown with ``digits`` decimals."""

    name: str
    header: str
    scale: float = 1.0
    digits: int = 2


def entry(key: str, column: Averaged | None = None, default: Any = None, null_with: str | None = None) -> Any:
    """A field stored under ``key`` in metrics.json (keys hold ``/``, field names cannot); left out
    while ``None``, unless the field ``null_with`` names is set (then ``null`` says something)."""
    return field(default=default, metadata={"key": key, "column": column, "null_with": null_with})


# What each annotation admits when a metrics.json is read back.
_NUMBER, _INT, _TEXT, _FLAG, _LIST = (int, float), (int,), (str,), (bool,), (list,)
_KINDS = {"Optional[float]": _NUMBER, "Optional[int]": _INT, "Optional[str]": _TEXT,
          "Optional[bool]": _FLAG, "Optional[list]": _LIST}


@dataclass
class RunMetrics:
    """One run's figures; ``None`` fields are left out of the file."""

    # What ran.
    protocol: Optional[str] = entry("protocol")  # heldout | seed
    model: Optional[str] = entry("model")
    data: Optional[str] = entry("data")
    recipe: Optional[str] = entry("recipe")
    hardware: Optional[str] = entry("hardware")
    tags: Optional[list] = entry("tags")  # the run's tags=[...], when it has any
    init_from: Optional[str] = entry("init_from")  # the checkpoint file a fine-tuned run started from
    # What made it a debug run, which vitlab-report leaves out of its averages: the debug config
    # (debug=smoke) and trainer settings that train on less than the data (fast_dev_run,
    # overfit_batches=N, limit_train_batches=N), joined by ", "; absent for a full run.
    debug: Optional[str] = entry("debug")
    params: Optional[int] = entry("params")
    trainable_params: Optional[int] = entry("trainable_params")
    epochs: Optional[int] = entry("epochs")  # epochs completed
    global_step: Optional[int] = entry("global_step")  # optimizer steps completed
    # Test scores: of the best checkpoint by val top-1 (heldout) or of the final weights (seed).
    test_top1: Optional[float] = entry("test/top1", Averaged("top1", "top-1 (%)", 100))
    test_top5: Optional[float] = entry("test/top5", Averaged("top5", "top-5 (%)", 100))
    val_top1_best: Optional[float] = entry("val/top1_best", Averaged("val_top1_best", "best val top-1 (%)", 100))
    test_loss: Optional[float] = entry("test/loss", Averaged("loss", "test loss", 1, 3))
    test_loss_smoothed: Optional[float] = entry("test/loss_smoothed")  # against the recipe's smoothed targets
    test_images: Optional[int] = entry("test/images")  # how many test images the scores are over
    test_partial: Optional[bool] = entry("test/partial")  # fewer than the whole split
    tested_ckpt: Optional[str] = entry("tested_ckpt", null_with="tested_weights")  # relative to the run folder; null: final weights
    tested_weights: Optional[str] = entry("tested_weights")  # best | final
    test_top1_final: Optional[float] = entry("test/top1_final")
    test_top1_best: Optional[float] = entry("test/top1_best")  # best test score during fit (data.val_size=0)
    test_top1_best_epoch: Optional[int] = entry("test/top1_best_epoch")
    val_images: Optional[int] = entry("val/images")
    val_top1_per_epoch: Optional[list] = entry("val/top1_per_epoch")
    test_top1_per_epoch: Optional[list] = entry("test/top1_per_epoch")
    # Speed and cost (the FLOPs and throughput callbacks).
    train_images_per_s: Optional[float] = entry("train/images_per_s", Averaged("train_img_s", "train img/s", 1, 1))
    val_images_per_s: Optional[float] = entry("val/images_per_s", Averaged("val_img_s", "val img/s", 1, 1))
    train_mfu: Optional[float] = entry("train/mfu")
    peak_tflops: Optional[float] = entry("peak_tflops")
    peak_source: Optional[str] = entry("peak_source")
    flops_per_image: Optional[int] = entry("flops_per_image")
    macs_per_image: Optional[int] = entry("macs_per_image")
    macs_per_image_without_sdpa: Optional[int] = entry("macs_per_image_without_sdpa")
    train_flops_per_image: Optional[int] = entry("train_flops_per_image")
    flops_img_size: Optional[int] = entry("flops_img_size")
    fit_time_s: Optional[float] = entry("fit_time_s")  # includes validation; a resumed run counts its own part
    wall_time_s: Optional[float] = entry("wall_time_s")
    extra: dict[str, Any] = field(default_factory=dict)

    def update(self, values: dict[str, Any]) -> None:
        """Set figures by their metrics.json keys; keys of no field go to :attr:`extra`."""
        names = _field_names()
        for key, value in values.items():
            if key in names:
                setattr(self, names[key], value)
            else:
                self.extra[key] = value

    def to_json(self) -> dict[str, Any]:
        """The metrics.json object: known keys in field order, then :attr:`extra`."""
        out = {f.metadata["key"]: getattr(self, f.name) for f in _entries() if self._written(f)}
        return {**out, **self.extra}

    def _written(self, f: Any) -> bool:
        with_field = f.metadata["null_with"]
        return getattr(self, f.name) is not None or (with_field is not None and getattr(self, with_field) is not None)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, default=float) + "\n")

    @classmethod
    def from_json(cls, values: Any) -> RunMetrics:
        """The record of a metrics.json object; a known key of the wrong type is a ``ValueError`` that
        names it (an int is a number, and so is a non-finite score)."""
        if not isinstance(values, dict):
            raise ValueError("holds no key: value object")
        record = cls()
        for f in _entries():
            key = f.metadata["key"]
            if key not in values or values[key] is None:
                continue
            kinds, value = _KINDS[str(f.type)], values[key]
            if kinds is _INT and isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON has one number type: 1.71e9 is a count
            if isinstance(value, bool) and kinds is not _FLAG or not isinstance(value, kinds):
                raise ValueError(f"{key} is {value!r}, expected {_kind_name(kinds)}")
            setattr(record, f.name, value)
        record.extra = {k: v for k, v in values.items() if k not in _field_names()}
        return record

    def get(self, key: str, default: Any = None) -> Any:
        """The value under a metrics.json key (a field's or an extra one)."""
        names = _field_names()
        value = getattr(self, names[key]) if key in names else self.extra.get(key)
        return default if value is None else value


def _entries() -> list[Any]:
    return [f for f in fields(RunMetrics) if "key" in f.metadata]


def _field_names() -> dict[str, str]:
    return {f.metadata["key"]: f.name for f in _entries()}


def _kind_name(kinds: tuple[type, ...]) -> str:
    return {_NUMBER: "a number", _INT: "an integer", _TEXT: "a string", _FLAG: "true or false", _LIST: "a list"}[kinds]


def averaged_columns(extra_keys: list[str] = ()) -> list[tuple[str, Averaged]]:
    """(metrics.json key, column) of every averaged report column: the fields' own, then one per
    ``extra_keys`` entry (``--metric``), shown as it is stored."""
    columns = [(f.metadata["key"], f.metadata["column"]) for f in _entries() if f.metadata["column"] is not None]
    known = {key for key, _ in columns}
    columns += [(key, Averaged(key.replace("/", "_"), key, 1, 4)) for key in extra_keys if key not in known]
    return columns


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
