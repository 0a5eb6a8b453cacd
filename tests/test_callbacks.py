"""The measuring callbacks: FLOPs/params, throughput and MFU, step logging, attention dumps."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlab import bench, measure
from vitlab.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1")


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_fit_records_params_flops_throughput_mfu_and_image_counts(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg(*SHORT, "hardware.peak_tflops=0.5", "trainer.limit_test_batches=1"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The MACs in metrics.json are the ones `python -m vitlab.bench mini_vit` reports.
    from_bench = bench.count(bench.build_subject("mini_vit"))
    assert saved["params"] == saved["trainable_params"] == 674_890
    assert saved["macs_per_image"] == from_bench.macs == saved["flops_per_image"] // 2
    assert saved["macs_per_image_without_sdpa"] == from_bench.macs_without_sdpa < from_bench.macs
    assert saved["train_flops_per_image"] == from_bench.train_step and saved["flops_img_size"] == 32
    assert saved["train/images_per_s"] > 0 and saved["val/images_per_s"] > 0
    assert saved["peak_tflops"] == 0.5 and saved["peak_source"] == "hardware.peak_tflops"
    # The one MFU definition: counted train-step FLOPs per image x images/s / peak.
    assert saved["train/mfu"] == pytest.approx(measure.mfu(from_bench.train_step, saved["train/images_per_s"], 0.5e12))
    assert metrics["macs_per_image"] == from_bench.macs
    # How many images each score is over: one val batch of 32 and one test batch of the 32-image test split
    # (whole), as the smoke config's splits hold 32 images each.
    assert saved["val/images"] == 32 and saved["test/images"] == 32 and saved["test/partial"] is False

    scalars = set(events(tmp_path / "run").Tags()["scalars"])
    assert {"model/flops_per_image", "model/macs_per_image", "model/params", "train/images_per_s", "val/images_per_s", "train/mfu"} <= scalars


def test_a_partial_test_is_marked(smoke_cfg, tmp_path):
    saved = train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "data.test_size=64",
                            "trainer.limit_test_batches=1"))
    assert saved["test/images"] == 32 and saved["test/partial"] is True
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/partial"] is True


def test_a_ten_step_run_logs_lr_and_grad_norm_once_per_step(smoke_cfg, tmp_path, monkeypatch):
    norms = []
    original = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: norms.append(1) or original(*a, **k))
    # 10 steps in one epoch with Lightning's default interval of 50 steps: clamped to the epoch's 10.
    train(smoke_cfg("model.net.depth=1", "data.train_size=352", "trainer.limit_train_batches=10", "trainer.limit_val_batches=1",
                    "trainer.log_every_n_steps=50", "test=false"))
    acc = events(tmp_path / "run")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/lr", "train/grad_norm", "train/loss_step"} <= scalars, scalars
    assert not any(tag.startswith("lr-") for tag in scalars)  # the LR is logged once, by the module
    (norm,) = acc.Scalars("train/grad_norm")
    assert norm.step == 9 and norm.value > 0
    assert 0 < acc.Scalars("train/lr")[0].value <= 2e-3  # the recipe's peak LR
    assert len(norms) == 10  # one gradient norm per optimizer step, shared by the NaN guard and the log


def test_runs_without_a_logger_still_measure(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "~logger", "test=false"))
    assert metrics["flops_per_image"] > 0 and metrics["peak_source"].startswith("measured fp32 matmul")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_attention_dumps_exist_after_a_short_fit(smoke_cfg, tmp_path):
    # Mini-ViT cut to 2 blocks: 2 maps, 2 pictures per dump.
    train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "model.net.depth=2",
                    "recipe.epochs=3", "callbacks.attention_dump.every_n_epochs=2",
                    "callbacks.attention_dump.num_images=3", "test=false"))
    dumps = tmp_path / "run" / "attention"
    # Epoch 2 (every 2) and epoch 3 (the last one); not epoch 1.
    assert sorted(p.name for p in dumps.iterdir()) == ["epoch_002", "epoch_003"]
    first = torch.load(dumps / "epoch_002" / "attention_maps.pt", weights_only=True)
    last = torch.load(dumps / "epoch_003" / "attention_maps.pt", weights_only=True)
    assert first["epoch"] == 2 and first["images"].shape == (3, 3, 32, 32)
    assert torch.equal(first["images"], last["images"])  # the same validation images every time
    assert sorted(first["maps"]) == ["blocks.0", "blocks.0.cls", "blocks.1", "blocks.1.cls"]
    assert first["layouts"]["blocks.0"]["layout"] == "tokens" and first["layouts"]["blocks.0"]["prefix_tokens"] == 2
    assert first["maps"]["blocks.0"].shape == (3, 12, 66, 66)
    torch.testing.assert_close(first["maps"]["blocks.0"].sum(-1), torch.ones(3, 12, 66))
    assert not torch.equal(first["maps"]["blocks.1"], last["maps"]["blocks.1"])  # trained in between
    pngs = sorted(p.name for p in (dumps / "epoch_003").glob("*.png"))
    # a block is drawn by its CLS map (the CLS query over the patch grid)
    assert pngs == ["blocks.0.cls.png", "blocks.1.cls.png"] and (dumps / "epoch_003" / "blocks.0.cls.png").read_bytes()[:4] == b"\x89PNG"
    images = events(tmp_path / "run").Tags()["images"]
    assert sorted(images) == ["attention/blocks.0.cls", "attention/blocks.1.cls"]


def test_attention_dump_is_off_by_default_and_skips_convolutional_models(smoke_cfg, tmp_path):
    train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false", out="plain"))
    assert not (tmp_path / "plain" / "attention").exists()
    train(smoke_cfg("model=resnet18", "recipe.batch_size=4", "data.train_size=12", "data.val_size=4",
                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
                    "callbacks.attention_dump.every_n_epochs=1", "~callbacks.model_checkpoint",
                    "trainer.enable_checkpointing=false", out="conv"))
    assert not (tmp_path / "conv" / "attention").exists()
