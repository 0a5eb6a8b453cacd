"""metrics.json as one typed record: what train writes is what report reads, and a field with a
column is a report column."""

import json

import lightning as L
import pytest
import yaml

from vitlab.callbacks.records import RunRecord
from vitlab.report import main, report
from vitlab.run_metrics import Averaged, RunMetrics, averaged_columns
from vitlab.training import train


def _run(root, name, overrides, metrics):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _metrics(top1, **extra):
    return {"model": "vit", "data": "cifar10", "test/top1": top1, "test/top5": 0.9, "val/top1_best": 0.5,
            "test/loss": 1.0, "train/images_per_s": 100.0, "val/images_per_s": 300.0, "params": 10, "epochs": 1, **extra}


def test_a_record_round_trips_and_keeps_unknown_keys():
    values = {**_metrics(0.5), "test/images": 100, "test/partial": False, "val/top1_per_epoch": [{"epoch": 1, "top1": 0.5}],
              "mine/ece": 0.03}
    record = RunMetrics.from_json(values)
    assert record.test_top1 == 0.5 and record.test_images == 100 and record.extra == {"mine/ece": 0.03}
    assert record.to_json() == values
    assert record.get("mine/ece") == 0.03 and record.get("test/top5") == 0.9 and record.get("absent", 1) == 1


@pytest.mark.parametrize("key, value, expected", [
    ("test/top1", "0.5", "a number"),
    ("epochs", 1.5, "an integer"),
    ("epochs", True, "an integer"),
    ("test/partial", 1, "true or false"),
    ("model", 3, "a string"),
])
def test_a_value_of_the_wrong_type_is_named(key, value, expected):
    with pytest.raises(ValueError, match=f"^{key} is .*, expected {expected}$"):
        RunMetrics.from_json({**_metrics(0.5), key: value})


def test_every_averaged_field_is_a_report_column_and_a_mistyped_run_is_left_out(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, f"{seed}_seed={seed}", [f"seed={seed}"], _metrics(0.5 + seed / 10))
    _run(tmp_path, "2_seed=2", ["seed=2"], _metrics("0.7"))
    table = report(tmp_path)
    markdown = (table["out_dir"] / "report.md").read_text()
    header = markdown.splitlines()[0]
    columns = averaged_columns()
    assert {key for key, _ in columns} >= {"test/top1", "test/top5", "val/top1_best", "test/loss", "train/images_per_s"}
    for _, column in columns:
        assert f" {column.header} |" in header
        assert table["rows"][0][f"{column.name}_n"] == 2
    assert table["rows"][0]["top1_mean"] == pytest.approx(55.0)
    assert "- 2 (seed=2): metrics.json test/top1 is '0.7', expected a number" in markdown


def test_metric_flag_averages_a_key_only_a_users_callback_records(tmp_path, capsys):
    for seed, ece in ((0, 0.02), (1, 0.04)):
        _run(tmp_path, f"{seed}_seed={seed}", [f"seed={seed}"], _metrics(0.5, **{"mine/ece": ece}))
    main([str(tmp_path), "--metric", "mine/ece", "--out", str(tmp_path / "report")])
    header, _, row = (tmp_path / "report" / "report.md").read_text().splitlines()[:3]
    assert header.split(" | ")[-1] == "mine/ece |" or " mine/ece |" in header
    assert "0.0300 ± 0.0141" in row
    assert "mine_ece_mean" in (tmp_path / "report" / "report.csv").read_text().splitlines()[0]
    # Without the flag the key stays in runs.csv only.
    main([str(tmp_path), "--out", str(tmp_path / "plain")])
    assert "mine/ece" not in (tmp_path / "plain" / "report.md").read_text().splitlines()[0]


def test_averaged_columns_name_an_extra_key_once():
    names = [column.name for _, column in averaged_columns(["test/top1", "mine/ece"])]
    assert names.count("top1") == 1 and names[-1] == "mine_ece"
    assert isinstance(averaged_columns()[0][1], Averaged) and averaged_columns()[0][0] == "test/top1"


class RecordsAtTest(L.Callback):
    """A user's callback whose figure exists only after testing."""

    def __init__(self):
        self.record, self.seen = RunRecord(), 0

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen += len(batch[1])
        self.record.put(**{"test/seen": self.seen})


def test_a_figure_recorded_while_testing_reaches_metrics_json(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                              "+callbacks.seen._target_=test_run_metrics.RecordsAtTest"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/seen"] == metrics["test/seen"] == saved["test/images"] > 0
    assert RunMetrics.from_json(saved).extra == {"test/seen": saved["test/images"]}
