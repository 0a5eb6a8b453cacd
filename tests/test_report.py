"""vitlab.report: a real 2 x 3 (two learning rates x three seeds) Hydra multirun of synthetic data end
to end; hand-made sweeps with known figures checked against scipy (means, standard deviations, the
paired and the Welch interval), seed figures, left-out runs, and its one-line errors."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from conftest import CONF_DIR, ROOT, compose_config
from vitlab.errors import ConfigError
from vitlab.report import difference_interval, load_seed_results, main, read_curves, report

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SEEDS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``python -m vitlab.train -m ... recipe.optimizer.lr=0.001,0.002 seed=0,1,2``, run in this process
    (Hydra's own multirun, as from the command line, without a second interpreter's start-up): six
    2-epoch runs of a 1-block Mini-ViT on 32 synthetic images."""
    from vitlab import train as train_module

    root = tmp_path_factory.mktemp("report")
    args = ["-m", "data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=32", "data.val_size=16",
            "data.test_size=16", "recipe.batch_size=16", "recipe.repeated_aug=1", "recipe.epochs=2",
            "trainer.num_sanity_val_steps=0", "model.net.depth=1", "callbacks.progress_bar.kind=tqdm",
            "recipe.optimizer.lr=0.001,0.002", "seed=0,1,2", "~callbacks.attention_dump", f"hydra.sweep.dir={root / 'sweep'}",
            f"paths.log_dir={root / 'logs'}"]
    argv = sys.argv
    sys.argv = ["vitlab.train", *args]
    # As `python -m` does: Hydra then finds conf/ relative to vitlab/train.py, not as a package.
    os.environ["HYDRA_MAIN_MODULE"] = "__main__"
    try:
        train_module.main()  # the command line's entry, its argument checks and rewrites included
    finally:
        sys.argv = argv
        del os.environ["HYDRA_MAIN_MODULE"]
    return root / "sweep"


def test_sweep_folders_name_the_swept_keys_only(sweep):
    names = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert names == [f"{i}_recipe.optimizer.lr@{lr}__seed@{seed}" for i, (lr, seed) in
                     enumerate((lr, seed) for lr in ("0.001", "0.002") for seed in SEEDS)], names


def test_report_of_a_real_multirun_averages_each_learning_rate_over_its_seeds(sweep):
    table = report(sweep)
    out = sweep / "report"
    assert table["label_keys"] == ["recipe.optimizer.lr"] and len(table["runs"]) == 6 and not table["left_out"]
    by_lr = {}
    for run in table["runs"]:
        by_lr.setdefault(run.overrides["recipe.optimizer.lr"], {})[run.replicate[0]] = json.loads((run.path / "metrics.json").read_text())
    assert sorted(by_lr) == ["0.001", "0.002"] and all(sorted(runs) == SEEDS for runs in by_lr.values())
    for row in table["rows"]:
        runs = by_lr[row["recipe.optimizer.lr"]]
        top1 = [100 * runs[s]["test/top1"] for s in SEEDS]
        assert row["n"] == 3 and row["seeds"] == "0,1,2"
        assert row["top1_mean"] == pytest.approx(statistics.fmean(top1)) and row["top1_std"] == pytest.approx(statistics.stdev(top1))
        assert row["train_img_s_mean"] > 0 and row["train_img_s_n"] == 3 and row["epochs"] == 2
        assert row["macs"] == runs["0"]["macs_per_image"] > 0
        if "test/images" in runs["0"]:  # recorded by runs since metrics.json has test/images
            assert row["test_images"] == runs["0"]["test/images"] and row["test_partial"] == runs["0"]["test/partial"]
    base, other = table["rows"]
    assert base["ci_method"] == "baseline" and other["ci_method"] == "paired"
    diffs = [100 * (by_lr["0.002"][s]["test/top1"] - by_lr["0.001"][s]["test/top1"]) for s in SEEDS]
    assert other["delta_top1"] == pytest.approx(statistics.fmean(diffs))

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["recipe.optimizer.lr"], r["n"], r["seeds"]) for r in rows] == [("0.001", "3", "0,1,2"), ("0.002", "3", "0,1,2")]
    assert float(rows[1]["top1_std"]) == pytest.approx(other["top1_std"])
    runs_rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs_rows) == 6 and {r["status"] for r in runs_rows} == {"averaged"}
    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[0].startswith("| recipe.optimizer.lr | model | data | n | seeds | top-1 (%) | Δ top-1 | 95 % CI of Δ |")
    assert markdown[0].count("| model |") == 1
    lines = [line for line in markdown if line.startswith(("| 0.001 |", "| 0.002 |"))]
    assert len(lines) == 2 and " ± " in lines[0] and "paired" in lines[1] and "| baseline |" in lines[0]

    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG" and table["curves_drawn"] == 2
    curves = read_curves(table["runs"][0].path)
    assert [epoch for epoch, _ in curves["val/top1"]] == [1, 2] and len(curves["val/loss"]) == 2
    label = table["labels"][0]
    mean_curve = table["curves"][label]["val/top1"]
    per_seed = [dict(read_curves(r.path)["val/top1"]) for r in table["groups"][0].runs]
    assert [p[0] for p in mean_curve] == [1, 2] and all(p[3] == 3 for p in mean_curve)
    for epoch, mean, std, _ in mean_curve:
        values = [c[epoch] for c in per_seed]
        assert mean == pytest.approx(statistics.fmean(values)) and std == pytest.approx(statistics.stdev(values))
    with pytest.raises(ConfigError, match=r"^--out: .* already holds report.md; give another --out <folder> or add --overwrite$"):
        report(sweep)
    assert report(sweep, overwrite=True)["out_dir"] == out


def fake_run(root: Path, name: str, overrides: list[str], metrics: dict | None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


# Test top-1 per seed (fractions), chosen so that the paired and the Welch intervals differ.
BASELINE_TOP1 = {"0": 0.712, "1": 0.731, "2": 0.705}
ROPE_TOP1 = {"0": 0.741, "1": 0.752, "2": 0.738}
ALIBI_TOP1 = {"3": 0.70, "4": 0.69}  # other seeds: compared with Welch's interval


def _metrics(model: str, top1: float, **extra) -> dict:
    return {"model": model, "data": "imagenet100", "test/top1": top1, "test/top5": top1 + 0.2, "val/top1_best": top1 + 0.01,
            "test/loss": 2 - top1, "train/images_per_s": 1000 * top1, "params": 5_555_044, "macs_per_image": 1.71e9,
            "epochs": 90, **extra}


def cell(markdown: str, first: str, header: str) -> str:
    """The cell of the table row that starts with ``first`` under ``header``."""
    lines = markdown.splitlines()
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    row = next(ln for ln in lines if ln.startswith(f"| {first} |"))
    return [c.strip() for c in row.strip("|").split("|")][headers.index(header)]


@pytest.fixture
def hand_made(tmp_path) -> Path:
    """3 models x seeds: vit and vit_rope on seeds 0-2, vit_alibi on 3-4, vit_cpe once; a run
    without metrics.json and one that diverged."""
    job = 0
    for model, top1s in (("vit", BASELINE_TOP1), ("vit_rope", ROPE_TOP1), ("vit_alibi", ALIBI_TOP1)):
        for seed, top1 in top1s.items():
            images = {"test/images": 640, "test/partial": True} if model == "vit_alibi" else {"test/images": 5000, "test/partial": False}
            fake_run(tmp_path, f"{job}_model={model},seed={seed}", [f"model={model}", f"seed={seed}"], _metrics(model, top1, **images))
            job += 1
    fake_run(tmp_path, f"{job}_model=vit_cpe,seed=0", ["model=vit_cpe", "seed=0"], _metrics("vit_cpe", 0.72))  # an older run: no test/images
    fake_run(tmp_path, f"{job + 1}_model=vit_cpe,seed=1", ["model=vit_cpe", "seed=1"], None)  # still running
    fake_run(tmp_path, f"{job + 2}_model=vit_cpe,seed=2", ["model=vit_cpe", "seed=2"], _metrics("vit_cpe", float("nan")))
    return tmp_path


def test_groups_over_seeds_match_scipy(hand_made):
    table = report(hand_made)
    rows = {row["model"]: row for row in table["rows"]}
    assert list(rows) == ["vit", "vit_rope", "vit_alibi", "vit_cpe"] and table["baseline"].settings == {"model": "vit"}
    for model, top1s in (("vit", BASELINE_TOP1), ("vit_rope", ROPE_TOP1), ("vit_alibi", ALIBI_TOP1)):
        values = [100 * v for v in top1s.values()]
        row = rows[model]
        assert row["n"] == len(values) and row["seeds"] == ",".join(top1s)
        assert row["top1_mean"] == pytest.approx(sum(values) / len(values))
        assert row["top1_std"] == pytest.approx(stats.tstd(values))  # the sample standard deviation (n - 1)
        assert row["top5_mean"] == pytest.approx(row["top1_mean"] + 20) and row["loss_mean"] == pytest.approx(2 - row["top1_mean"] / 100)

    base = [100 * BASELINE_TOP1[s] for s in SEEDS]
    rope = [100 * ROPE_TOP1[s] for s in SEEDS]
    paired = stats.ttest_rel(rope, base).confidence_interval(0.95)
    assert rows["vit_rope"]["ci_method"] == "paired"
    assert rows["vit_rope"]["delta_top1"] == pytest.approx(sum(rope) / 3 - sum(base) / 3)
    assert (rows["vit_rope"]["ci_low"], rows["vit_rope"]["ci_high"]) == pytest.approx((paired.low, paired.high))
    assert rows["vit_rope"]["ci_excludes_0"] is True and paired.low > 0

    alibi = [100 * v for v in ALIBI_TOP1.values()]
    welch = stats.ttest_ind(alibi, base, equal_var=False).confidence_interval(0.95)
    assert rows["vit_alibi"]["ci_method"] == "Welch"
    assert (rows["vit_alibi"]["ci_low"], rows["vit_alibi"]["ci_high"]) == pytest.approx((welch.low, welch.high))
    assert rows["vit_alibi"]["ci_excludes_0"] is False and welch.low < 0 < welch.high

    one = rows["vit_cpe"]  # one run: no spread and no interval, never a zero
    assert one["n"] == 1 and one["top1_std"] is None and one["ci_low"] is None and one["ci_excludes_0"] is None
    assert one["delta_top1"] == pytest.approx(72 - sum(base) / 3)

    markdown = (hand_made / "report" / "report.md").read_text()
    line = {m: next(ln for ln in markdown.splitlines() if ln.startswith(f"| {m} |")) for m in rows}
    assert line["vit"].startswith(f"| vit | imagenet100 | 3 | 0,1,2 | {sum(base) / 3:.2f} ± {stats.tstd(base):.2f} | baseline |  |")
    assert f"[{paired.low:+.2f}, {paired.high:+.2f}] paired *" in line["vit_rope"]
    assert f"[{welch.low:+.2f}, {welch.high:+.2f}] Welch" in line["vit_alibi"]
    images = {m: cell(markdown, m, "test images") for m in rows}
    assert images == {"vit": "5,000", "vit_rope": "5,000", "vit_alibi": "640 (partial)", "vit_cpe": "-"}
    assert line["vit_cpe"].startswith("| vit_cpe | imagenet100 | 1 | 0 | 72.00 | ") and "- (n < 2)" in line["vit_cpe"] and "± 0.00" not in line["vit_cpe"]
    assert markdown.splitlines()[0].count("model") == 1  # the swept model column, not a second one
    assert "- 9 (model=vit_cpe seed=1): no metrics.json (still running, stopped or failed)" in markdown
    assert "- 10 (model=vit_cpe seed=2): test/top1 is nan (diverged)" in markdown
    assert [r.name for r in table["left_out"]] == ["9", "10"]

    csv_rows = {r["model"]: r for r in csv.DictReader((hand_made / "report" / "report.csv").open())}
    assert csv_rows["vit_cpe"]["top1_std"] == "" and csv_rows["vit_cpe"]["ci_low"] == ""
    assert float(csv_rows["vit_rope"]["ci_low"]) == pytest.approx(paired.low)
    statuses = {r["run"]: r["status"] for r in csv.DictReader((hand_made / "report" / "runs.csv").open())}
    assert statuses["10"] == "test/top1 is nan (diverged)" and statuses["0"] == "averaged" and len(statuses) == 11


def test_difference_interval_edge_cases():
    same = difference_interval([70.0, 70.0], [69.0, 69.0], paired=False)  # no spread on either side
    assert (same["delta"], same["low"], same["high"]) == pytest.approx((1.0, 1.0, 1.0))
    shifted = difference_interval([71.0, 72.5, 70.2], [70.0, 71.5, 69.2], paired=True)  # every seed +1.0
    assert (shifted["low"], shifted["high"], shifted["df"]) == pytest.approx((1.0, 1.0, 2))
    welch = difference_interval([71.0, 72.5, 70.2, 73.0], [70.0, 71.5], paired=False)
    expected = stats.ttest_ind([71.0, 72.5, 70.2, 73.0], [70.0, 71.5], equal_var=False).confidence_interval()
    assert (welch["low"], welch["high"]) == pytest.approx((expected.low, expected.high))
    assert difference_interval([71.0], [70.0, 71.5], paired=False)["low"] is None


def test_baseline_and_over_choose_the_comparison(hand_made):
    table = report(hand_made, baseline=["model=vit_rope"], out=hand_made / "r1")
    rows = {row["model"]: row for row in table["rows"]}
    assert rows["vit_rope"]["ci_method"] == "baseline"
    paired = stats.ttest_rel([100 * BASELINE_TOP1[s] for s in SEEDS], [100 * ROPE_TOP1[s] for s in SEEDS]).confidence_interval()
    assert (rows["vit"]["ci_low"], rows["vit"]["ci_high"]) == pytest.approx((paired.low, paired.high))
    # Averaged over nothing: every run is its own group, n = 1 and no interval anywhere.
    table = report(hand_made, over=["data.split_seed"], out=hand_made / "r2")
    assert len(table["rows"]) == 9 and {r["n"] for r in table["rows"]} == {1}
    assert all(r["ci_low"] is None and r["ci_method"] in (None, "baseline") for r in table["rows"]) and table["label_keys"] == ["model", "seed"]
    with pytest.raises(ConfigError, match=r"^--baseline: no group of runs has model=deit; the groups are: model=vit; model=vit_rope; model=vit_alibi; model=vit_cpe$"):
        report(hand_made, baseline=["model=deit"], out=hand_made / "r3")
    with pytest.raises(ConfigError, match=r"^--baseline: seed=0 matches 3 groups; add keys to pick one of: "
                       r"model=vit seed=0; model=vit_rope seed=0; model=vit_cpe seed=0$"):
        report(hand_made, baseline=["seed=0"], over=["data.split_seed"], out=hand_made / "r3")
    with pytest.raises(ConfigError, match=r"^--baseline: 'vit' is not key=value; write e.g. --baseline model=vit$"):
        report(hand_made, baseline=["vit"], out=hand_made / "r3")


def test_cli_flags_and_one_line_errors(hand_made, capsys):
    main([str(hand_made), "--baseline", "model=vit_alibi", "--over", "seed", "--out", str(hand_made / "cli")])
    assert "| vit_alibi | imagenet100 | 2 | 3,4 | 69.50 ± 0.71 | baseline |" in capsys.readouterr().out and (hand_made / "cli" / "runs.csv").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main([str(hand_made), "--out", str(hand_made / "cli")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out: {hand_made / 'cli'} already holds report.md; give another --out <folder> or add --overwrite"
    ]


def test_against_seed_puts_the_published_figure_beside_each_group(tmp_path):
    common = {"test/top5": 0.9, "params": 7_518_102, "macs_per_image": 443_000_000, "epochs": 100, "data": "cifar100",
              "macs_per_image_without_sdpa": 441_000_000, "protocol": "seed"}
    for seed, top1 in (("0", 0.795), ("1", 0.80), ("2", 0.805)):
        fake_run(tmp_path, f"{seed}_model=outgrid_7m,seed={seed}", ["model=outgrid_7m", f"seed={seed}"],
                 {**common, "model": "outgrid_7m", "test/top1": top1})
    fake_run(tmp_path, "3_model=resnet18,seed=0", ["model=resnet18", "seed=0"], {**common, "model": "resnet18", "test/top1": 0.7})
    fake_run(tmp_path, "4_model=deit_tiny,seed=0", ["model=deit_tiny", "seed=0"], None)  # still running
    table = report(tmp_path, against="seed")
    assert table["label_keys"] == ["model"] and [r["network"] for r in table["rows"]] == ["outgrid_7m", "resnet18"]
    first, second = table["rows"]
    assert first["seed_top1"] == 79.72 and first["seed_delta"] == pytest.approx(80.0 - 79.72)
    assert first["seed_inside"] is True  # 79.72 is within 80.0 ± 0.5
    # The seeds counted with fvcore (no SDPA): that count sits beside theirs, with the protocol.
    assert (first["macs_no_sdpa"], first["protocol"]) == (441_000_000, "seed")
    assert (second["seed_top1"], second["seed_inside"]) == (73.25, None) and second["seed_delta"] == pytest.approx(-3.25)
    markdown = (tmp_path / "report" / "report.md").read_text()
    header = markdown.splitlines()[0]
    assert header.startswith("| model | data | n | seeds |")  # the registry names are the config names: no network column
    assert "| protocol |" in header and "| MACs/image without SDPA | seed MACs |" in header
    assert "| 79.72 | +0.28 | yes |" in markdown and "| 73.25 | -3.25 | - |" in markdown
    assert "- 4 (model=deit_tiny seed=0): no metrics.json" in markdown
    assert table["curves_drawn"] == 0  # no TensorBoard events in hand-made runs: an empty plot, no error


def test_stopped_runs_are_left_out(tmp_path):
    run = fake_run(tmp_path, "0_seed=0", ["seed=0"], {"test/top1": 0.5, "epochs": 3})
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "trainer": {"max_epochs": 10, "max_steps": -1}}))
    fake_run(tmp_path, "1_seed=1", ["seed=1"], {"test/top1": 0.6, "epochs": 10})
    fake_run(tmp_path, "2_seed=2", ["seed=2"], None)
    (tmp_path / "2_seed=2" / "metrics.json").write_text('{"test/top1": 0.')  # cut off mid-write
    early = fake_run(tmp_path, "3_seed=3", ["seed=3"], {"test/top1": 0.7, "epochs": 4})  # early stopping ended it
    (early / "config.yaml").write_text(yaml.safe_dump({"seed": 3, "trainer": {"max_epochs": 10, "max_steps": -1},
                                                       "callbacks": {"early_stopping": {"patience": 2}}}))
    table = report(tmp_path)
    assert [r.problem for r in table["left_out"]] == ["stopped after epoch 3 of 10", "metrics.json unreadable (JSONDecodeError)"]
    assert table["rows"][0]["n"] == 2 and table["rows"][0]["top1_mean"] == pytest.approx(65.0)
    assert table["rows"][0]["group"] == "all runs" and table["rows"][0]["seeds"] == "1,3"


def test_seed_results_name_registered_networks_and_data_configs():
    from vitlab.models import list_models

    data_configs = {p.stem for p in (CONF_DIR / "data").glob("*.yaml")}
    networks = set(list_models())
    for network, per_data in load_seed_results().items():
        assert network in networks or network.startswith("qavit"), network  # QAViT lands from its own branch
        for data, figures in per_data.items():
            assert data in data_configs, (network, data)
            assert figures.get("source") and ("top1" in figures or "clean_top1" in figures), (network, data)


def test_sweep_files_say_how_to_ask_for_seeds():
    for path in sorted((CONF_DIR / "sweep").glob("*.yaml")):
        assert "seed=0,1,2" in path.read_text(), path.name
    for name in ("clear_vit_ablation", "baselines_cifar32"):
        params = compose_config([f"sweep={name}"], hydra=True).hydra.sweeper.params
        assert params.seed == "0,1,2" and list(params) == ["model", "seed"], name


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
