"""vitlab.evaluate on a checkpoint of a short synthetic run: the run's test split, a TinyImageNet-C
fixture (corruption x severity table, plots, mCE), and the one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from conftest import CONF_DIR, SMOKE, compose_config
from vitlab.config import register_configs
from vitlab.errors import ConfigError
from vitlab.evaluate import evaluate, robustness_summary

pytestmark = pytest.mark.usefixtures("one_thread")

# Ten wnids for the synthetic task's ten classes (label = position in the sorted list).
WNIDS = [f"n0{i}000000" for i in range(10)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A mini_vit run dir: two steps on synthetic data, best checkpoint tested, metrics.json written."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    from vitlab.training import train

    train(compose_config([*SMOKE, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"], output_dir=out))
    return out


def compose_evaluate(*overrides: str, out_dir: Path) -> object:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["hardware=cpu", "hardware.num_workers=0", *overrides])
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    return cfg


def write_corruption_fixture(root: Path, corruptions=("gaussian_noise", "fog"), severities=(1, 3), per_class=1) -> None:
    """``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` as in the Tiny-ImageNet-C release (64 px)."""
    for c_index, corruption in enumerate(corruptions):
        for severity in severities:
            for w_index, wnid in enumerate(WNIDS):
                folder = root / corruption / str(severity) / wnid
                folder.mkdir(parents=True)
                for i in range(per_class):
                    shade = (25 * w_index + 40 * severity + 7 * c_index + i) % 256
                    Image.new("RGB", (64, 64), (shade, 255 - shade, 128)).save(folder / f"{i}.JPEG", "JPEG")


def test_evaluate_reproduces_the_runs_test_score_and_times_with_real_counts(trained_run, tmp_path, capsys):
    tested = json.loads((trained_run / "metrics.json").read_text())
    ckpt = trained_run / tested["tested_ckpt"]  # relative to the run folder
    cfg = compose_evaluate(f"ckpt_path={ckpt}", "batch_size=12", "warmup_iters=1", out_dir=tmp_path / "eval")
    result = evaluate(cfg)
    scores = result["sets"]["all"]
    # The run's own test split (32 images), scored as trainer.test scored it.
    assert scores["images"] == 32
    assert scores["top1"] == pytest.approx(tested["test/top1"], abs=1e-6)
    assert scores["top5"] == pytest.approx(tested["test/top5"], abs=1e-6)
    assert scores["loss"] == pytest.approx(tested["test/loss"], rel=1e-4)
    assert scores["loss_smoothed"] == pytest.approx(tested["test/loss_smoothed"], rel=1e-4)
    # 3 batches (12 + 12 + 8): images/s counts the 32 real images over the summed forward time.
    assert scores["images_per_s"] == pytest.approx(32 / (3 * scores["ms_per_batch"] / 1000), rel=1e-6)
    saved = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert saved["sets"]["all"]["top1"] == scores["top1"] and saved["model"] == "mini_vit"
    assert not (tmp_path / "eval" / "robustness.csv").exists()
    # The whole split was scored; the MACs are the run's own (the one count, vitlab.measure).
    assert scores["partial"] is False and saved["sets"]["all"]["partial"] is False
    assert saved["macs_per_image"] == tested["macs_per_image"]
    assert saved["macs_per_image_without_sdpa"] == tested["macs_per_image_without_sdpa"]

    # A prefix is marked partial, and says so next to the score.
    part = evaluate(compose_evaluate(f"ckpt_path={ckpt}", "batch_size=12", "warmup_iters=0", "limit_batches=1",
                                     out_dir=tmp_path / "part"))["sets"]["all"]
    assert part["images"] == 12 and part["partial"] is True
    assert "all: 12 of 32 (partial) images" in capsys.readouterr().out

    # Results already there are not overwritten silently.
    with pytest.raises(ConfigError, match=r"^out_dir: .* already holds eval_metrics.json; give another out_dir"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", out_dir=tmp_path / "eval"))


def test_evaluate_on_tinyimagenet_c_writes_the_table_and_both_plots(trained_run, tmp_path):
    write_corruption_fixture(tmp_path / "Tiny-ImageNet-C")
    common = [
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        "data=tinyimagenet_c",
        f"paths.data_dir={tmp_path}",
        f"data.train_wnids=[{','.join(WNIDS)}]",
        "data.num_classes=10",
        "data.img_size=32",
        "data.persistent_workers=false",
        "warmup_iters=0",
    ]
    out = tmp_path / "tinc"
    result = evaluate(compose_evaluate(*common, out_dir=out))
    assert list(result["sets"]) == ["gaussian_noise/1", "gaussian_noise/3", "fog/1", "fog/3"]
    assert all(s["images"] == 10 for s in result["sets"].values())
    summary = result["robustness"]
    assert result["clean"]["images"] == 32  # the run's own test split is the clean reference
    assert summary["clean_top1"] == result["clean"]["top1"]
    tops = [s["top1"] for s in result["sets"].values()]
    assert summary["mean_corrupted_top1"] == pytest.approx(sum(tops) / 4)
    assert summary["per_severity"][3] == pytest.approx((tops[1] + tops[3]) / 2)
    for name in ("robustness.json", "robustness.md", "robustness_per_corruption.png", "robustness_per_severity.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "robustness_per_corruption.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader((out / "robustness.csv").open()))
    assert rows[0] == ["corruption", "severity_1", "severity_3", "mean"]
    assert [r[0] for r in rows[1:]] == ["gaussian_noise", "fog", "mean"]
    assert float(rows[1][1]) == pytest.approx(100 * tops[0], abs=0.006)
    markdown = (out / "robustness.md").read_text()
    assert "| gaussian_noise |" in markdown and "mean corrupted top-1" in markdown

    # Against itself as the reference, mCE and relative mCE are 100 by definition.
    again = evaluate(compose_evaluate(*common, f"reference={out}", out_dir=tmp_path / "tinc2"))
    assert again["robustness"]["mce"] == pytest.approx(100.0)
    relative = again["robustness"]["relative_mce"]  # None when the model does no worse corrupted than clean
    assert relative is None or relative == pytest.approx(100.0)
    assert "mCE 100.00" in (tmp_path / "tinc2" / "robustness.md").read_text()


def test_mce_and_relative_mce_by_hand():
    table = {"fog": {1: 0.8, 2: 0.6}, "blur": {1: 0.5, 2: 0.5}}
    ref = {"table": {"fog": {1: 0.6, 2: 0.4}, "blur": {1: 0.5, 2: 0.0}}, "clean_top1": 0.9, "model": "ref"}
    summary = robustness_summary(table, clean_top1=0.9, reference=ref)
    # fog: errors 0.2 + 0.4 over 0.4 + 0.6 = 0.6; blur: 0.5 + 0.5 over 0.5 + 1.0 = 2/3.
    assert summary["mce"] == pytest.approx(100 * (0.6 + 2 / 3) / 2)
    # relative: fog (0.1 + 0.3) / (0.3 + 0.5) = 0.5; blur (0.4 + 0.4) / (0.4 + 0.9) = 0.8 / 1.3.
    assert summary["relative_mce"] == pytest.approx(100 * (0.5 + 0.8 / 1.3) / 2)
    assert summary["mean_corrupted_top1"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match=r"^reference: the reference table lacks fog/3"):
        robustness_summary({"fog": {3: 0.5}}, 0.9, ref)


def test_evaluate_errors_name_the_key(trained_run, tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path: no checkpoint file at .*missing.ckpt; give a .ckpt"):
        evaluate(compose_evaluate(f"ckpt_path={tmp_path / 'missing.ckpt'}", out_dir=tmp_path / "a"))
    # Same network name, other settings: the tensors do not fit.
    with pytest.raises(ConfigError, match=r"^ckpt_path: the weights in .* do not fit model mini_vit \(\d+ tensors missing, \d+ unexpected, \d+ of another shape"):
        evaluate(compose_evaluate(f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "model=mini_vit", "data=synthetic",
                                  "model.net.depth=7", out_dir=tmp_path / "c"))
    # A 10-class network on 3-class data would print top-1 0.00; refused before anything is written.
    with pytest.raises(ConfigError, match=r"^data.num_classes: the checkpoint's mini_vit classifies 10 classes but the data has 3; "):
        evaluate(compose_evaluate(f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "data=synthetic", "data.num_classes=3",
                                  out_dir=tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match=r"^limit_batches: expected a number of batches >= 1 \(or null for every batch\), got -1$"):
        evaluate(compose_evaluate(f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "limit_batches=-1", out_dir=tmp_path / "e"))
    (tmp_path / "not.ckpt").write_text("hello")
    with pytest.raises(ConfigError, match=r"^ckpt_path: .*not.ckpt is not a checkpoint \(torch.save writes a zip archive; this file of 5 bytes starts with b.hello."):
        evaluate(compose_evaluate(f"ckpt_path={tmp_path / 'not.ckpt'}", out_dir=tmp_path / "b"))


def test_cli_one_line_for_a_checkpoint_of_another_model(trained_run, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "vitlab.evaluate", f"ckpt_path={ckpt}", "model=outgrid", "data=synthetic", "hardware=cpu"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: ckpt_path: {ckpt} holds weights of mini_vit, not of model outgrid; "
                     "use model=mini_vit or the checkpoint of a outgrid run"], done.stderr[-2000:]


def test_evaluate_probes_every_block_of_a_run(trained_run, tmp_path):
    tested = json.loads((trained_run / "metrics.json").read_text())
    out = tmp_path / "eval"
    cfg = compose_evaluate(f"ckpt_path={trained_run / tested['tested_ckpt']}", "probe=linear", "pictures=false",
                           "warmup_iters=1", "limit_batches=2", "batch_size=16", out_dir=out)
    result = evaluate(cfg)
    rows = list(csv.DictReader(open(out / "probe.csv")))
    assert [r["block"] for r in rows] == [p["block"] for p in result["probe"]] and len(rows) >= 2
    for row, record in zip(rows, result["probe"]):
        assert float(row["test_top1"]) == pytest.approx(record["top1"], abs=1e-4)
        assert 0.0 <= record["top1"] <= 1.0 and record["images"] == result["sets"]["all"]["images"] == 32
        assert record["train_images"] == 32  # limit_batches: a class-balanced prefix of each set
    assert json.loads((out / "eval_metrics.json").read_text())["probe"] == result["probe"]
