"""logger=csv / tensorboard / wandb (offline) / mlflow (local file store) / many, with the real libraries."""

from __future__ import annotations

import csv

import pytest

from conftest import CONF_DIR, SMOKE, compose_config
from vitlab.cli import check_group_choices
from vitlab.errors import ConfigError

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

TINY = [*SMOKE, "model.net.depth=1", "~callbacks.attention_dump", "~callbacks.flops", "~callbacks.throughput"]


def test_many_loggers_each_write_the_run_locally(tmp_path, monkeypatch):
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vitlab.training import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own cache and settings stay in the test folder
    out = tmp_path / "run"
    cfg = compose_config([*TINY, "logger=many"], output_dir=out)
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb", "mlflow"}
    try:
        metrics = train(cfg)
    finally:
        wandb.finish()
    top1 = metrics["test/top1"]

    (csv_file,) = (out / "csv").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(csv_file.open()))
    assert any(row.get("train/loss") for row in rows) and any(row.get("test/top1") for row in rows)

    (events,) = [p for p in (out / "tensorboard").glob("events.out.tfevents.*") if p.stat().st_size > 200][:1]
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]

    (offline,) = (out / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")) and offline.joinpath("files").is_dir()

    (metric_file,) = (out / "mlruns").glob("*/*/metrics/test/top1")
    assert float(metric_file.read_text().split()[1]) == pytest.approx(top1)
    assert list((out / "mlruns").glob("*/*/metrics/train/loss"))


@pytest.mark.parametrize("choice", ["csv", "tensorboard", "wandb", "mlflow", "many", "[csv,wandb]"])
def test_logger_choices_compose(choice, tmp_path):
    cfg = compose_config([f"logger={choice}"], output_dir=tmp_path)
    wanted = {"many": {"csv", "tensorboard", "wandb", "mlflow"}, "[csv,wandb]": {"csv", "wandb"}}.get(choice, {choice})
    assert set(cfg.logger) == wanted
    check_group_choices([f"logger={choice}"], CONF_DIR)
    if "wandb" in wanted:
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
    if "mlflow" in wanted:
        assert cfg.logger.mlflow.tracking_uri == f"file:{tmp_path}/mlruns"


def test_unknown_logger_in_a_list_is_one_line():
    with pytest.raises(ConfigError, match=r"^logger=comet: no such logger config; choose one of: csv, many, mlflow"):
        check_group_choices(["logger=[csv,comet]"], CONF_DIR)
