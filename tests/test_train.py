"""End-to-end runs of the train task on synthetic data (CPU)."""

import json

import pytest
import torch
import yaml

from conftest import ROOT, train_help
from vitlab.registry_nodes import model_options
from vitlab.run_metrics import RunMetrics
from vitlab.training import train

MODELS = model_options()


def test_fit_writes_checkpoints_metrics_and_tensorboard(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg("trainer.limit_train_batches=2", "trainer.limit_val_batches=1"))
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("epoch_") for p in (run / "checkpoints").iterdir())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["global_step"] == 2 and saved["epochs"] == 1
    assert saved["params"] == metrics["params"] == 674_890
    assert 0.0 <= saved["test/top1"] <= saved["test/top5"] <= 1.0
    assert saved["tested_ckpt"].endswith(".ckpt") and "epoch_001" in saved["tested_ckpt"]  # counted from 1
    assert saved["test/loss"] > 0 and saved["wall_time_s"] > 0
    assert RunMetrics.from_json(saved).extra == {}  # every key train writes is a typed field


# One model config per network design and family runs by default; the others run with -m slow, each
# covered by a faster run of the same code: its sibling here at another width or depth, or a test that
# trains that very config (test_vit's tiny runs of every variant, test_outgrid's full-size 32 and 64 px runs).
COVERED_ELSEWHERE = {
    **{name: "mini_vit" for name in ("mini_vit_d192", "mini_vit_d192_l12")},
    **{name: f"test_vit.py::test_trains_a_few_steps_on_synthetic_data[{name}]" for name in (
        "vit_alibi", "vit_cpe", "vit_diff_entropy", "vit_diffsim", "vit_pe_dropout", "vit_rope", "vit_rope_axial",
        "vit_rope_mixed", "vit_suppress")},
    "outgrid": "test_outgrid.py::test_trains_on_synthetic_data[32-outgrid]",
    "outgrid_7m": "test_outgrid.py::test_trains_on_synthetic_data[32-outgrid]",  # the same network
    "outgrid_tinc": "test_outgrid.py::test_trains_on_synthetic_data[64-outgrid_tinc]",
    **{name: "test_outgrid.py::test_trains_on_synthetic_data[32-outgrid]" for name in (
        "outgrid_14m", "outgrid_33m", "outgrid_svhn", "outgrid_tin22m")},
    "qavit_small": "qavit_tiny",
    "qavit_small_32": "qavit_tiny_32",
    "resnet50": "resnet18",
    "deit_small": "deit_tiny",
    "maxvit_tiny": "maxvit_nano",
}


def _parametrize_ids(test) -> set[str]:
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return {"-".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in mark.args[1]}


def test_each_model_config_trains_by_default_or_has_its_cover():
    import importlib

    assert set(COVERED_ELSEWHERE) < set(MODELS)
    for name, cover in COVERED_ELSEWHERE.items():
        if "::" not in cover:  # a sibling that runs here by default
            assert cover in MODELS and cover not in COVERED_ELSEWHERE, (name, cover)
            continue
        path, test = cover.split("::")
        function, param = test.rstrip("]").split("[")
        test = getattr(importlib.import_module(path.removesuffix(".py")), function)
        assert param in _parametrize_ids(test) and not any(m.name == "slow" for m in test.pytestmark), (name, cover)


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in COVERED_ELSEWHERE else m for m in MODELS])
def test_every_model_trains_a_step(model, smoke_cfg):
    """One optimizer step, a validation batch (with the attention check) and a test batch per model
    config. Checkpointing is off: writing the large baselines' optimizer state would dominate."""
    metrics = train(
        smoke_cfg(f"model={model}", "recipe.batch_size=4", "data.train_size=12", "data.val_size=4",
                  "data.test_size=4", "trainer.limit_train_batches=1", "~callbacks.model_checkpoint",
                  "trainer.enable_checkpointing=false")
    )
    assert metrics["global_step"] == 1 and metrics["tested_ckpt"] is None
    assert metrics["test/loss"] > 0 and metrics["test/loss"] == metrics["test/loss"]  # finite, not NaN


def test_csv_logger_records_the_run(smoke_cfg, tmp_path):
    train(smoke_cfg("logger=csv", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"))
    (metrics_csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    text = metrics_csv.read_text()
    assert "val/top1" in text and "hp/test_top1" in text


def test_checkpoints_load_weights_only_and_rebuild_the_module(smoke_cfg, tmp_path):
    from vitlab.families import ImageClassifier

    train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"))
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["name"] == "mini_vit"
    assert not any(k.startswith("net._orig_mod") for k in ckpt["state_dict"])
    module = ImageClassifier.load_from_checkpoint(ckpt_path, weights_only=True)
    torch.testing.assert_close(module.net.head.weight, ckpt["state_dict"]["net.head.weight"])


def test_mini_vit_learns_the_synthetic_task(smoke_cfg):
    """Ten classes (chance 10 %): a short CPU run must get well above chance on held-out images.
    Six epochs reach 0.43, 0.44 and 0.46 test top-1 with seeds 0 (this run), 1 and 2."""
    metrics = train(
        smoke_cfg(
            "data.train_size=768",
            "data.val_size=192",
            "data.test_size=256",
            "recipe.epochs=6",
            "recipe.batch_size=48",
            "recipe.schedule.warmup_epochs=1",
            "recipe.mixing.prob=0",
            "recipe.augment.auto_augment=null",
            "recipe.augment.random_erasing=0",
            "model.net.drop_rate=0",
            "model.net.attention.attn_drop=0",
        )
    )
    assert metrics["test/top1"] > 0.35, metrics


def _lr_at_end(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["optimizer_states"][0]["param_groups"][0]["lr"], ckpt["global_step"], ckpt["epoch"]


def test_resume_continues_step_lr_and_epoch_exactly(smoke_cfg, tmp_path):
    common = ("recipe.epochs=3", "recipe.schedule.warmup_epochs=1", "trainer.limit_val_batches=1", "test=false")
    straight = train(smoke_cfg(*common, "trainer.max_epochs=2", out="straight"))
    first = train(smoke_cfg(*common, "trainer.max_epochs=1", out="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(smoke_cfg(*common, "trainer.max_epochs=2", f"ckpt_path={last}", out="resumed"))
    assert first["global_step"] == 3 and first["epochs"] == 1  # 128 - 32 held out = 3 batches of 32
    assert resumed["global_step"] == straight["global_step"] == 6
    assert resumed["epochs"] == straight["epochs"] == 2
    lr_straight, step_straight, epoch_straight = _lr_at_end(tmp_path / "straight")
    lr_resumed, step_resumed, epoch_resumed = _lr_at_end(tmp_path / "resumed")
    assert (step_resumed, epoch_resumed) == (step_straight, epoch_straight)
    assert lr_resumed == pytest.approx(lr_straight, rel=1e-12)
    assert lr_resumed < 2e-3  # past the warmup peak on the 3-epoch cosine
    assert (tmp_path / "first" / "checkpoints" / "last.ckpt").stat().st_size > 0  # the first run is untouched


def test_cli_trains_then_continues_in_the_same_run_dir(tmp_path, monkeypatch, one_thread):
    """The command line's path (``python -m vitlab.train``, run in this process: a real process, which
    costs seconds of imports, is test_scale's DDP run and test_package's wheel)."""
    from test_config_errors import run_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    args = ["data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=64", "data.val_size=32",
            "data.test_size=32", "recipe.batch_size=32", "recipe.repeated_aug=1", "recipe.epochs=2",
            "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "paths.log_dir=logs"]
    code, stderr = run_in_process(args)
    assert code == 0, stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    first_overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()

    # Only the run dir and the new stopping epoch: the run's own overrides are reused.
    code, stderr = run_in_process([f"run_dir={run_dir}", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["global_step"] == 2 * 1  # 64 - 32 held out = 1 batch per epoch
    assert metrics["data"] == "synthetic"
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == first_overrides
    assert list((run_dir / ".hydra").glob("resume_*/overrides.yaml"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["train_size"] == 64


def test_help_lists_the_config_groups():
    text = train_help()
    for group in ("model:", "data:", "recipe:", "hardware:", "callbacks:", "logger:", "experiment:"):
        assert group in text, group
    assert "mini_vit" in text and "rtx3060_6gb" in text
    groups = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    for internal in ("net:", "schema", "protocol_data:", "protocol_recipe:"):  # what only vitlab's configs use
        assert internal not in groups, internal
    assert "debug: " in groups


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "python -m pytest -q" in readme
    # ... in a new virtual environment, as the README sets one up
    assert "python -m venv .venv && . .venv/bin/activate" in readme
    assert "python -m venv --clear .venv" in ci and ". .venv/bin/activate" in ci


def test_a_resume_folder_is_named_once_per_command(tmp_path, monkeypatch):
    """Hydra resolves .hydra/resume_<time> more than once per command; every resolution, and train's
    own look-up, must name the same folder however the clock moves, and the next command a new one
    even within the same second."""
    import datetime as dt

    import vitlab.resume as resume

    class Clock(dt.datetime):
        ticks = 0

        @classmethod
        def now(cls, tz=None):
            cls.ticks += 1
            return dt.datetime(2026, 1, 1, 10, 0, cls.ticks)

    monkeypatch.setattr(resume, "datetime", Clock)
    resume.forget_resume_subdirs()
    first = resume.resume_subdir(tmp_path)
    assert resume.resume_subdir(tmp_path) == resume.resume_subdir(str(tmp_path)) == first
    (tmp_path / first).mkdir(parents=True)
    resume.forget_resume_subdirs()
    Clock.ticks = 0  # the next command starts in the same second
    second = resume.resume_subdir(tmp_path)
    assert second == f"{first}_2"
    resume.forget_resume_subdirs()


def test_a_run_prints_no_library_notices(tmp_path):
    """A real process: Lightning's second model summary notice, its cloud-logger advertisement and
    the LeafSpec deprecation its batch handling triggers are not printed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings shown, as a user sees them
    env.update(HYDRA_FULL_ERROR="0", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    args = ["data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=64", "data.val_size=32",
            "data.test_size=32", "recipe.batch_size=32", "recipe.repeated_aug=1", "recipe.epochs=1",
            "callbacks.progress_bar.kind=tqdm", "paths.output_dir=run"]
    done = subprocess.run([sys.executable, "-m", "vitlab.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    for notice in ("Trainer already configured with model summary", "Tip: For seamless cloud logging", "LeafSpec"):
        assert notice not in out, notice
    assert "Total params" in out  # the one model summary
    for line in ("GPU available: False, used: False", "run dir: "):  # Lightning's and vitlab's info lines, once each
        assert out.count(line) == 1, (line, out[:3000])
