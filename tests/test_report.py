"""vitlab.report on a real two-run Hydra multirun of synthetic data, on hand-made sweeps (seed
figures, unfinished runs) and its one-line error."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONF_DIR, ROOT
from vitlab.errors import ConfigError
from vitlab.report import load_seed_results, read_curves, report

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``python -m vitlab.train -m ... recipe.optimizer.lr=0.001,0.002``, run in this process (Hydra's
    own multirun, as from the command line, without a second interpreter's start-up): two 2-epoch
    runs of a 1-block Mini-ViT."""
    from vitlab import train as train_module

    root = tmp_path_factory.mktemp("report")
    args = ["-m", "data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=48", "data.val_size=16",
            "data.test_size=16", "recipe.batch_size=16", "recipe.repeated_aug=1", "recipe.epochs=2",
            "trainer.num_sanity_val_steps=0", "model.net.depth=1", "callbacks.progress_bar.kind=tqdm",
            "recipe.optimizer.lr=0.001,0.002", f"hydra.sweep.dir={root / 'sweep'}", f"paths.log_dir={root / 'logs'}"]
    argv = sys.argv
    sys.argv = ["vitlab.train", *args]
    # As `python -m` does: Hydra then finds conf/ relative to vitlab/train.py, not as a package.
    os.environ["HYDRA_MAIN_MODULE"] = "__main__"
    try:
        train_module._hydra_main()
    finally:
        sys.argv = argv
        del os.environ["HYDRA_MAIN_MODULE"]
    return root / "sweep"


def test_report_of_a_real_multirun_has_a_row_per_run_and_the_swept_column(sweep):
    table = report(sweep)
    out = sweep / "report"
    assert table["swept"] == ["recipe.optimizer.lr"] and len(table["rows"]) == 2
    assert [(r["run"], r["recipe.optimizer.lr"]) for r in table["rows"]] == [("0", "0.001"), ("1", "0.002")]
    for row, run in zip(table["rows"], table["runs"]):
        metrics = json.loads((run / "metrics.json").read_text())
        assert row["top1"] == pytest.approx(100 * metrics["test/top1"], abs=0.005)
        assert row["macs"] == metrics["macs_per_image"] > 0 and row["params"] == metrics["params"]
        assert row["train_img_s"] > 0 and row["epochs"] == 2
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["recipe.optimizer.lr"] for r in rows] == ["0.001", "0.002"]
    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[0].startswith("| run | recipe.optimizer.lr | model | data | top-1 (%) |")
    assert len([line for line in markdown if line.startswith("| 0 |") or line.startswith("| 1 |")]) == 2
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG" and table["curves_drawn"] == 2
    curves = read_curves(table["runs"][0])
    assert [epoch for epoch, _ in curves["val/top1"]] == [1, 2] and len(curves["val/loss"]) == 2
    with pytest.raises(ConfigError, match=r"^out_dir: .* already holds report.md; give another out_dir"):
        report(sweep)


def fake_run(root: Path, name: str, overrides: list[str], metrics: dict | None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_against_seed_puts_the_published_figure_beside_each_row(tmp_path):
    common = {"test/top5": 0.9, "params": 7_518_102, "macs_per_image": 443_000_000, "epochs": 100, "data": "cifar100"}
    fake_run(tmp_path, "0_model=outgrid_7m", ["model=outgrid_7m", "data=cifar100"], {**common, "model": "outgrid_7m", "test/top1": 0.8}),
    fake_run(tmp_path, "1_model=resnet18", ["model=resnet18", "data=cifar100"], {**common, "model": "resnet18_cifar", "test/top1": 0.7})
    fake_run(tmp_path, "2_model=deit_tiny", ["model=deit_tiny", "data=cifar100"], None)  # still running
    table = report(tmp_path, against="seed")
    assert table["swept"] == ["model"] and [r["model"] for r in table["rows"]] == ["outgrid_7m", "resnet18_cifar"]
    first, second = table["rows"]
    assert (first["seed_top1"], first["delta_top1"]) == (79.72, 0.28)
    assert (second["seed_top1"], second["delta_top1"]) == (73.25, -3.25)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| 79.72 | +0.28 |" in markdown and "Unfinished (no metrics.json): 2_model=deit_tiny" in markdown
    assert table["curves_drawn"] == 0  # no TensorBoard events in hand-made runs: an empty plot, no error


def test_seed_results_name_registered_networks_and_data_configs():
    from vitlab.models import list_models

    data_configs = {p.stem for p in (CONF_DIR / "data").glob("*.yaml")}
    networks = set(list_models())
    for network, per_data in load_seed_results().items():
        assert network in networks or network.startswith("qavit"), network  # QAViT lands from its own branch
        for data, figures in per_data.items():
            assert data in data_configs, (network, data)
            assert figures.get("source") and ("top1" in figures or "clean_top1" in figures), (network, data)


def test_no_finished_runs_is_one_line(tmp_path):
    fake_run(tmp_path / "sweep", "0_seed=1", ["seed=1"], None)
    with pytest.raises(ConfigError, match=r"^multirun dir: .* holds 1 run folder\(s\), none with metrics.json"):
        report(tmp_path / "sweep")
    done = subprocess.run([sys.executable, "-m", "vitlab.report", str(tmp_path / "sweep")], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: multirun dir: {tmp_path / 'sweep'} holds 1 run folder(s), none with metrics.json; "
        "give the folder of a sweep whose runs have finished"
    ]
    with pytest.raises(ConfigError, match=r"^multirun dir: .*nothing is not a folder; give a folder under multirun/"):
        report(tmp_path / "nothing")
