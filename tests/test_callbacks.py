"""The measuring callbacks: FLOPs/params, throughput and MFU, LR monitor, attention dumps."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from callbacks import count_flops, measure_matmul_tflops
from vitlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1")


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_flop_counter_matches_a_hand_count_of_conv_and_linear():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    conv_macs = 4 * 3 * 3 * 3 * 8 * 8  # out channels x in channels x kernel taps x output pixels
    linear_macs = 4 * 8 * 8 * 10
    assert count_flops(model, torch.zeros(1, 3, 8, 8)) == 2 * (conv_macs + linear_macs)  # 18,944
    assert count_flops(model, torch.zeros(5, 3, 8, 8)) == 5 * 2 * (conv_macs + linear_macs)


def test_measured_cpu_peak_is_a_positive_rate():
    assert 0 < measure_matmul_tflops(size=128, repeats=2) < 100


def test_fit_records_params_flops_throughput_mfu_and_lr(smoke_cfg, tmp_path):
    from vitlab.models import create_model

    metrics = train(smoke_cfg(*SHORT, "hardware.peak_tflops=0.5"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    net = create_model("mini_vit", num_classes=10).eval()
    flops = count_flops(net, torch.zeros(1, 3, 32, 32))
    assert saved["params"] == saved["trainable_params"] == 674_890
    assert saved["flops_per_image"] == flops and saved["macs_per_image"] == flops // 2 and saved["flops_img_size"] == 32
    assert saved["train/images_per_s"] > 0 and saved["val/images_per_s"] > 0
    assert saved["peak_tflops"] == 0.5 and saved["peak_source"] == "hardware.peak_tflops"
    # MFU = forward + backward (3 x forward FLOPs) per image x images/s / peak.
    assert saved["train/mfu"] == pytest.approx(3 * flops * saved["train/images_per_s"] / 0.5e12)
    assert metrics["flops_per_image"] == flops

    scalars = set(events(tmp_path / "run").Tags()["scalars"])
    assert {"model/flops_per_image", "model/macs_per_image", "model/params", "train/images_per_s", "val/images_per_s", "train/mfu"} <= scalars
    assert any(tag.startswith("lr-AdamW") for tag in scalars), scalars  # the LR monitor, per parameter group


def test_runs_without_a_logger_still_measure(smoke_cfg, tmp_path):
    metrics = train(smoke_cfg("trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "~logger", "test=false"))
    assert metrics["flops_per_image"] > 0 and metrics["peak_source"] == "measured fp32 matmul"
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
