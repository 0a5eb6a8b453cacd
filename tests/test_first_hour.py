"""A researcher's first hour: a short schedule still decays, training past the schedule is refused,
the debug configs run to the end and mark their metrics.json, and tags reach metrics.json."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from test_config_errors import run_in_process  # python -m vitlab.train, in this process
from test_report import fake_run
from vitlab.config import ScheduleConfig
from vitlab.optim import build_scheduler, shortened_warmup
from vitlab.report import report
from vitlab.run_metrics import RunMetrics
from vitlab.training import debug_mode, train

# A tiny network on tiny synthetic data, for the command-line runs below.
TINY = ["data=synthetic", "data.train_size=64", "data.val_size=16", "data.test_size=16", "recipe.batch_size=16",
        "model.net.depth=1", "callbacks.progress_bar.kind=tqdm", "paths.log_dir=logs"]


def _lrs(schedule_cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, schedule_cfg, 0.1, steps_per_epoch, epochs)
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_a_schedule_shorter_than_the_warmup_warms_up_over_half_and_decays():
    lrs = _lrs(ScheduleConfig(warmup_epochs=10, warmup_lr=0.0), steps_per_epoch=5, epochs=2)
    peak = lrs.index(max(lrs))
    assert peak == 5 and max(lrs) == pytest.approx(0.1)  # warmup: 1 epoch of 2
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :])) and lrs[-1] < 0.01
    assert shortened_warmup(ScheduleConfig(warmup_epochs=10), 5, 2) == (
        "recipe.epochs=2 leaves no decay after the recipe's 10 warmup epochs: warmup 1 epoch(s) of 2 (half the run), "
        "then the cosine decay"
    )
    # A schedule longer than its warmup is the recipe's, with no line.
    assert shortened_warmup(ScheduleConfig(warmup_epochs=10), 5, 11) is None
    assert _lrs(ScheduleConfig(warmup_epochs=2, warmup_lr=0.0), 5, 4).index(0.1) == 10
    assert shortened_warmup(ScheduleConfig(warmup_ratio=0.5), 5, 2) is None


def test_a_two_epoch_run_logs_a_rising_then_decaying_lr(smoke_cfg, tmp_path, caplog, one_thread):
    """mini_vit's recipe warms up for 10 epochs; recipe.epochs=2 (3 steps an epoch) warms up over the first epoch."""
    with caplog.at_level(logging.INFO):
        train(smoke_cfg("recipe.epochs=2", "model.net.depth=1", "test=false", "logger=csv", "trainer.limit_val_batches=1"))
    (metrics_csv,) = (tmp_path / "run").rglob("metrics.csv")
    lrs = [float(row["train/lr"]) for row in csv.DictReader(metrics_csv.open()) if row.get("train/lr")]
    assert len(lrs) == 6
    peak = lrs.index(max(lrs))
    assert 0 < peak < 5 and lrs[0] < lrs[peak] and lrs[-1] < lrs[peak] / 2  # rises, peaks, ends decayed
    notes = [r.getMessage() for r in caplog.records if "leaves no decay" in r.getMessage()]
    assert notes == ["recipe.epochs=2 leaves no decay after the recipe's 10 warmup epochs: warmup 1 epoch(s) of 2 "
                     "(half the run), then the cosine decay"]


def test_max_epochs_past_recipe_epochs_is_refused_also_on_resume(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([*TINY, "hardware=cpu", "hardware.num_workers=0", "recipe.epochs=2", "trainer.max_epochs=3"])
    (line,) = stderr.strip().splitlines()
    assert code == 2 and line.startswith("error: trainer.max_epochs: 3 is past recipe.epochs=2")
    assert "set recipe.epochs=3 to extend the schedule" in line
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("config.yaml"))

    code, stderr = run_in_process([*TINY, "hardware=cpu", "hardware.num_workers=0", "recipe.epochs=2", "trainer.max_epochs=1",
                                   "test=false", "trainer.num_sanity_val_steps=0", "paths.output_dir=run"])
    assert code == 0, stderr[-2000:]
    code, stderr = run_in_process(["run_dir=run", "trainer.max_epochs=4"])
    assert code == 2 and stderr.strip().splitlines()[-1].startswith("error: trainer.max_epochs: 4 is past recipe.epochs=2")
    assert not list((tmp_path / "run" / ".hydra").glob("resume_*"))  # the refused resume leaves no record
    code, stderr = run_in_process(["run_dir=run", "recipe.epochs=4", "trainer.max_epochs=2"])  # recipe.epochs extends it
    assert code == 0, stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


# debug config -> what metrics.json's "debug" says (each run takes 1-5 s here, on the tiny data).
DEBUG_RUNS = [
    ("smoke", "debug=smoke, limit_train_batches=2"),
    ("fdr", "debug=fdr, fast_dev_run"),
    ("limit", "debug=limit, limit_train_batches=3"),
    ("default", "debug=default"),
    ("overfit", "debug=overfit, overfit_batches=3"),
    ("profiler", "debug=profiler, limit_train_batches=10"),
]


@pytest.mark.parametrize("config, marked", DEBUG_RUNS)
def test_each_debug_config_runs_to_the_end_and_marks_metrics_json(config, marked, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    extra = ["recipe.epochs=4"] if config == "overfit" else []  # 4 epochs of the 20 would show the same
    code, stderr = run_in_process([f"debug={config}", *TINY, *extra])
    assert code == 0, stderr[-3000:]
    (run,) = (tmp_path / "logs" / "debug" / "runs").iterdir()  # task_name=debug
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["debug"] == marked and metrics["test/top1"] is not None
    assert not list(run.rglob("events.out.tfevents*"))  # no logger files
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["hardware"]["accelerator"] == "cpu" and saved["hardware"]["num_workers"] == 0
    assert not any(saved["callbacks"].get(k) for k in ("flops", "throughput", "attention_dump"))


def test_tags_reach_metrics_json_and_the_loggers(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process(["debug=smoke", *TINY, "tags=[baseline,lr_sweep]", "logger=csv"])
    assert code == 0, stderr[-3000:]
    (run,) = (tmp_path / "logs" / "debug" / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["tags"] == ["baseline", "lr_sweep"]
    (hparams,) = run.rglob("hparams.yaml")
    assert yaml.safe_load(hparams.read_text())["tags"] == "baseline,lr_sweep"


def test_debug_mode_names_what_trains_on_less_than_the_data():
    from omegaconf import OmegaConf

    trainer = OmegaConf.create({"limit_train_batches": None, "overfit_batches": 0.0})
    assert debug_mode(None, trainer) is None
    assert debug_mode(None, OmegaConf.create({"limit_train_batches": 1.0})) is None  # all batches
    assert debug_mode(None, OmegaConf.create({"limit_train_batches": 1})) == "limit_train_batches=1"  # one batch
    assert debug_mode("fdr", OmegaConf.create({"fast_dev_run": True})) == "debug=fdr, fast_dev_run"
    assert debug_mode(None, OmegaConf.create({"overfit_batches": 0.1})) == "overfit_batches=0.1"


def test_metrics_json_keeps_tags_and_debug():
    record = RunMetrics(tags=["a", "b"], debug="debug=smoke")
    assert RunMetrics.from_json(json.loads(json.dumps(record.to_json()))) == record
    with pytest.raises(ValueError, match="tags is 'a', expected a list"):
        RunMetrics.from_json({"tags": "a"})


def test_report_leaves_debug_runs_out_and_says_why(tmp_path):
    fake_run(tmp_path, "0_seed=0", ["seed=0"], {"test/top1": 0.5, "epochs": 1, "debug": "debug=smoke, limit_train_batches=2"})
    fake_run(tmp_path, "1_seed=1", ["seed=1"], {"test/top1": 0.6, "epochs": 10})
    fake_run(tmp_path, "2_seed=2", ["seed=2"], {"test/top1": 0.7, "epochs": 10, "debug": "fast_dev_run"})
    table = report(tmp_path)
    assert [r.problem for r in table["left_out"]] == ["a debug run (debug=smoke, limit_train_batches=2)",
                                                      "a debug run (fast_dev_run)"]
    assert table["rows"][0]["n"] == 1 and table["rows"][0]["top1_mean"] == pytest.approx(60.0)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "a debug run (fast_dev_run)" in markdown.split("Runs left out of the averages:", 1)[1]


def test_the_readme_smoke_run_is_debug_smoke():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "vitlab-train debug=smoke data=synthetic" in readme
