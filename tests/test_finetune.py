"""Fine-tuning from a run (``init_from=``): a ViT trained on 10 classes at 32 px starts a run on 5
classes at 64 px from its weights (the position table resampled, the head new, the loss falling);
OutGrid follows the new size and QAViT is refused; every refusal is one line with exit status 2 and
leaves no run folder behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from timm.layers import resample_abs_pos_embed

from conftest import compose_config
from test_config_errors import run_in_process  # python -m vitlab.train, in this process
from vitlab.checkpoint import DIGEST_KEY, load_checkpoint, state_digest
from vitlab.finetune import load_weights_for_fine_tuning
from vitlab.instantiate import build_module
from vitlab.runs import find_checkpoint

# One short epoch on tiny synthetic data, on the CPU.
RUN = [
    "data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=64", "data.val_size=16",
    "data.test_size=16", "recipe.batch_size=16", "recipe.epochs=1", "recipe.repeated_aug=1",
    "callbacks.progress_bar.kind=tqdm", "trainer.num_sanity_val_steps=0", "logger=csv",
]
# A ViT with a learned position table: 8x8 patches at 32 px, 16x16 at 64 px.
TINY_VIT = ["model=vit", "model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2"]
AT_64_PX_5_CLASSES = ["data.img_size=64", "data.num_classes=5"]
TINY_OUTGRID = ["model=outgrid_7m", "model.net.stem_dim=8", "model.net.dims=[8,8,16,16]", "model.net.depths=[1,1,1,1]",
                "model.net.num_heads=[1,1,2,2]", "model.net.outlook_heads=[1,1,2,2]"]
TINY_QAVIT = ["model=qavit_tiny_32", "model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A run folder (Hydra's record included) of the tiny ViT trained on 10 classes at 32 px."""
    folder = tmp_path_factory.mktemp("source")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("HYDRA_FULL_ERROR", "0")
        code, stderr = run_in_process([*RUN, *TINY_VIT, "paths.output_dir=run"])
    assert code == 0, stderr[-3000:]
    return folder / "run"


def _module(*overrides: str) -> tuple:
    """(config, family module) of the synthetic data and ``overrides``."""
    cfg = compose_config(["data=synthetic", *overrides])
    return cfg, build_module(cfg.model)


def _save_signed(checkpoint: dict, path: Path) -> Path:
    """``checkpoint`` written as vitlab writes one, with its digest."""
    checkpoint = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    torch.save({**checkpoint, DIGEST_KEY: state_digest(checkpoint)}, path)
    return path


def _checkpoint_of(module: torch.nn.Module, path: Path) -> Path:
    """A checkpoint of ``module``'s weights as they were built (no training needed to load them)."""
    return _save_signed({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


def test_the_table_is_the_old_one_resampled_and_the_rest_the_old_weights(source_run, one_thread, caplog):
    saved = load_checkpoint(find_checkpoint(source_run))["state_dict"]
    cfg, module = _module(*TINY_VIT, *AT_64_PX_5_CLASSES)
    with caplog.at_level("INFO"):
        load_weights_for_fine_tuning(find_checkpoint(source_run), module, cfg.model)
    table = module.net.position.pos_embed
    assert table.shape == (1, 16 * 16, 32)
    expected = resample_abs_pos_embed(saved["net.position.pos_embed"].float(), new_size=[16, 16], old_size=[8, 8],
                                      num_prefix_tokens=0)
    torch.testing.assert_close(table.detach(), expected)
    state = module.state_dict()
    body = [k for k in saved if not k.startswith(("net.head.", "net.position."))]
    assert body and all(torch.equal(state[k], saved[k]) for k in body)
    assert module.net.head.weight.shape == (5, 32)
    assert "a new head for 5 classes, initialised afresh (the checkpoint's head is for 10 classes)" in caplog.text


def test_a_fine_tune_at_64_px_learns_and_records_where_its_weights_came_from(source_run, tmp_path, monkeypatch, capsys,
                                                                             one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([
        *RUN, *TINY_VIT, *AT_64_PX_5_CLASSES, f"init_from={source_run}", "paths.output_dir=ft",
        "recipe.optimizer.layer_decay=0.75",
        # The same 3 batches for 4 epochs, unaugmented, at a high flat LR: a loss that falls is the network learning.
        "debug=overfit", "recipe.epochs=4", "recipe.optimizer.lr=1e-2", "recipe.schedule.warmup_ratio=0",
    ])
    assert code == 0, stderr[-3000:]
    said = capsys.readouterr().out  # the run's log lines (Hydra's job logging writes them to stdout)
    assert "init_from: position table net.position resampled from the 8x8 patch grid to 16x16 patches" in said
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["init_from"] == str(find_checkpoint(source_run).resolve())
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["init_from"] == str(source_run)
    (metrics_csv,) = (tmp_path / "ft").rglob("metrics.csv")
    rows = csv.DictReader(metrics_csv.read_text().splitlines())
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05, losses


def test_outgrid_follows_the_new_size_with_every_weight_kept(tmp_path, one_thread):
    _, small = _module(*TINY_OUTGRID)
    path = _checkpoint_of(small, tmp_path / "outgrid.ckpt")
    cfg, large = _module(*TINY_OUTGRID, *AT_64_PX_5_CLASSES)
    load_weights_for_fine_tuning(path, large, cfg.model)
    saved, state = small.state_dict(), large.state_dict()
    head = {"net.head.weight", "net.head.bias"}
    assert all(torch.equal(state[k], saved[k]) for k in saved if k not in head)
    assert large.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


@pytest.fixture(scope="module")
def refusal_files(source_run, tmp_path_factory) -> dict[str, Path]:
    """What the refused commands name: the source run, a checkpoint of it missing a tensor, a QAViT
    checkpoint at 32 px."""
    folder = tmp_path_factory.mktemp("refused")
    checkpoint = torch.load(find_checkpoint(source_run), map_location="cpu", weights_only=True)
    del checkpoint["state_dict"]["net.blocks.0.norm1.weight"]
    _, qavit = _module(*TINY_QAVIT)
    return {"source": source_run, "missing": _save_signed(checkpoint, folder / "missing.ckpt"),
            "qavit": _checkpoint_of(qavit, folder / "qavit.ckpt")}


REFUSALS = [
    (["init_from=nowhere"], "init_from: {cwd}/nowhere is neither a .ckpt file nor a run folder with checkpoints/"),
    (["model=mini_vit", "model.net.depth=1", "init_from={source}"],
     "init_from: {source}/checkpoints/epoch_001.ckpt holds weights of vit, not of model mini_vit"),
    (["init_from={missing}"],
     "init_from: the weights in {missing} do not fit model vit (1 tensors missing, 0 unexpected"),
    ([*TINY_QAVIT, *AT_64_PX_5_CLASSES, "init_from={qavit}"],
     "init_from: qavit_tiny_32 cannot be fine-tuned at another image size (img_size 32 in {qavit}, 64 here): "
     "net.pos_embed is"),
    (["init_from={source}", "ckpt_path={source}/checkpoints/last.ckpt"],
     "init_from: starts a new run from another run's weights and cannot go with a resume"),
    (["run_dir={source}", "init_from={source}"],
     "init_from: starts a new run from another run's weights and cannot go with a resume"),
]


REFUSAL_IDS = ["no path", "another network", "a tensor missing", "qavit at 64 px", "with ckpt_path", "with run_dir"]


@pytest.mark.parametrize("args, expected", REFUSALS, ids=REFUSAL_IDS)
def test_a_refused_fine_tune_is_one_line_and_leaves_nothing(args, expected, refusal_files, tmp_path, monkeypatch,
                                                            one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    names = {**{k: str(v) for k, v in refusal_files.items()}, "cwd": str(tmp_path)}
    source_before = sorted(p.relative_to(refusal_files["source"]) for p in refusal_files["source"].rglob("*"))
    model = [] if any(a.startswith("model=") for a in args) else TINY_VIT
    code, stderr = run_in_process([*RUN, *model, "paths.log_dir=logs", *(a.format(**names) for a in args)])
    _assert_one_line_refusal(code, stderr, expected.format(**names))
    assert not list((tmp_path / "logs").rglob("config.yaml")) and not list((tmp_path / "logs").rglob(".hydra"))
    assert sorted(p.relative_to(refusal_files["source"]) for p in refusal_files["source"].rglob("*")) == source_before


def test_the_outgrid_fine_tune_experiment_asks_for_its_32_px_run_in_one_line(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process(["experiment=cifar100_64_outgrid_finetune", "hardware=cpu", "paths.log_dir=logs"])
    _assert_one_line_refusal(code, stderr, "init_from: no value given; add init_from=<run folder or .ckpt>")
    assert not list((tmp_path / "logs").rglob(".hydra"))


def _assert_one_line_refusal(code: int, stderr: str, expected: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2, stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_fine_tuned_run_continues_from_its_own_checkpoint(source_run, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    first = [*RUN, *TINY_VIT, *AT_64_PX_5_CLASSES, f"init_from={source_run}", "paths.output_dir=ft", "recipe.epochs=2",
             "trainer.max_epochs=1"]
    code, stderr = run_in_process(first)
    assert code == 0, stderr[-3000:]
    code, stderr = run_in_process(["run_dir=ft", "trainer.max_epochs=2"])
    assert code == 0, stderr[-3000:]
    said = capsys.readouterr().out
    assert f"init_from: continuing a fine-tuned run from its own checkpoint (init_from={source_run} started it)" in said
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["init_from"] == str(find_checkpoint(source_run).resolve())
