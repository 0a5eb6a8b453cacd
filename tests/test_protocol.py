"""protocol=heldout (the default) and protocol=seed (each original's own protocol, docs/seeds/)."""

import json

import pytest
import torch

from conftest import CONF_DIR, SMOKE, compose_config
from vitlab.datamodules import build_train_transform
from vitlab.datamodules.erasing import ChannelConstantErasing
from vitlab.config import gpu_precision, to_hardware
from vitlab.errors import ConfigError
from vitlab.training import train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

# The precision each recipe's original trained in on a GPU, and how often it scored the test split.
SEED_PRECISION = {"mini_vit": "32-true", "clear_vit": "32-true", "outgrid": "16-mixed", "qavit": "16-mixed"}
SEED_EVAL_EVERY = {"mini_vit": 5, "clear_vit": 5, "outgrid": 1, "qavit": 1}


def _recipe_family(cfg) -> str:
    """Which original's recipe an experiment uses, told apart by values only that recipe has."""
    if cfg.recipe.repeated_aug == 3:
        return "mini_vit"
    if cfg.recipe.augment.get("randaug_legacy"):
        return "clear_vit"
    if cfg.recipe.channels_last:
        return "outgrid"
    assert cfg.model._target_.endswith("QAViTClassifier")
    return "qavit"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_seed_protocol_composes_for_every_experiment(experiment):
    heldout = compose_config([f"experiment={experiment}", "hardware=cpu"])
    cpu = compose_config([f"experiment={experiment}", "protocol=seed", "hardware=cpu"])
    gpu = compose_config([f"experiment={experiment}", "protocol=seed", "hardware=gpu"])
    family = _recipe_family(cpu)
    assert heldout.protocol == "heldout" and cpu.protocol == gpu.protocol == "seed"
    assert heldout.data.val_size > 0
    # OutGrid's published runs held 10 % out; the other originals trained on the whole train split.
    assert cpu.data.val_size == (0.1 if family == "outgrid" else 0)
    assert gpu.hardware.precision == SEED_PRECISION[family]
    assert cpu.hardware.precision == "32-true"  # the originals' mixed precision was CUDA-only
    assert to_hardware(cpu.hardware).precision == "32-true"  # resolves inside the schema, too
    assert cpu.trainer.check_val_every_n_epoch == SEED_EVAL_EVERY[family]
    # Nothing else of the experiment changes: the recipe is the same but for the documented details.
    assert cpu.recipe.optimizer == heldout.recipe.optimizer and cpu.model == heldout.model


def test_seed_protocol_restores_clear_vit_erasing_and_outgrid_svhn_flip():
    for experiment in ("imagenet100_vit", "imagenet100_vit_rope_mixed"):
        assert compose_config([f"experiment={experiment}"]).recipe.augment.random_erasing_style == "torchvision"
        seed = compose_config([f"experiment={experiment}", "protocol=seed"])
        assert seed.recipe.augment.random_erasing_style == "clear_vit"
    assert compose_config(["experiment=svhn_outgrid"]).recipe.augment.hflip is False
    assert compose_config(["experiment=svhn_outgrid", "protocol=seed"]).recipe.augment.hflip is True
    # The flip is SVHN's only: OutGrid on CIFAR flips anyway, the TinyImageNet-C run keeps its no-flip.
    assert compose_config(["experiment=tinyimagenet_outgrid_tinc", "protocol=seed"]).recipe.augment.hflip is False


def test_command_line_wins_over_the_protocol():
    cfg = compose_config(["model=mini_vit", "protocol=seed", "trainer.check_val_every_n_epoch=1", "data.val_size=100"])
    assert cfg.trainer.check_val_every_n_epoch == 1 and cfg.data.val_size == 100


def test_gpu_precision_is_the_seed_precision_on_a_gpu_only():
    assert gpu_precision("16-mixed", "gpu") == gpu_precision("16-mixed", "cuda") == "16-mixed"
    assert gpu_precision("16-mixed", "cpu") == "32-true"
    assert gpu_precision("16-mixed", "auto") == ("16-mixed" if torch.cuda.is_available() else "32-true")


def _seed_smoke(tmp_path, *overrides):
    # SMOKE holds out data.val_size=32; protocol=seed must validate on the test split instead.
    smoke = [o for o in SMOKE if not o.startswith("data.val_size=")]
    return compose_config(
        [*smoke, "recipe.epochs=2", "trainer.check_val_every_n_epoch=1", *overrides], output_dir=tmp_path / "run"
    )


def test_seed_protocol_trains_on_the_whole_train_split_and_scores_test_during_fit(tmp_path, one_thread):
    metrics = train(_seed_smoke(tmp_path, "protocol=seed"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["protocol"] == "seed" and saved == json.loads(json.dumps(metrics, default=float))
    # All 128 train images in batches of 32: 4 steps an epoch (3 when 32 are held out, below).
    assert saved["global_step"] == 2 * 4
    curve = saved["test/top1_per_epoch"]
    assert [p["epoch"] for p in curve] == [1, 2] and "val/top1_per_epoch" not in saved
    assert saved["test/top1_best"] == max(p["top1"] for p in curve)
    assert saved["test/top1_best_epoch"] in (1, 2)
    # The final weights are tested after fit: the same score as the last test evaluation of fit.
    assert saved["tested_weights"] == "final" and saved["tested_ckpt"] is None
    assert saved["test/top1_final"] == saved["test/top1"]
    assert saved["test/top1_final"] == pytest.approx(curve[-1]["top1"], abs=1e-6)


def test_heldout_protocol_holds_out_validation_and_tests_the_best_checkpoint(tmp_path, one_thread):
    metrics = train(_seed_smoke(tmp_path, "data.val_size=32"))
    assert metrics["protocol"] == "heldout" and metrics["global_step"] == 2 * 3
    assert [p["epoch"] for p in metrics["val/top1_per_epoch"]] == [1, 2]
    assert "test/top1_per_epoch" not in metrics and "test/top1_best" not in metrics and "test/top1_final" not in metrics
    assert metrics["tested_weights"] == "best" and metrics["tested_ckpt"].endswith(".ckpt")


def test_an_unknown_protocol_is_one_line(tmp_path):
    cfg = compose_config([*SMOKE], output_dir=tmp_path / "run")
    cfg.protocol = "paper"
    with pytest.raises(ConfigError, match=r"^protocol: unknown protocol 'paper'; use one of heldout, seed"):
        train(cfg)


def test_clear_vit_erasing_fills_one_uniform_value_per_channel():
    torch.manual_seed(0)
    erase = ChannelConstantErasing(p=1.0, scale=(0.1, 0.3), ratio=(0.3, 3.3))
    aspects = []
    for _ in range(200):
        image = torch.full((3, 32, 32), -5.0)
        out = erase(image)
        assert (image == -5.0).all()  # the input is not written into
        box = out != -5.0
        assert box.any()
        rows, cols = box[0].any(1).nonzero(), box[0].any(0).nonzero()
        h, w = len(rows), len(cols)
        assert box[0].sum() == h * w  # one rectangle
        for c in range(3):
            values = out[c][box[c]]
            assert torch.all(values == values[0]) and 0 <= values[0] < 1  # one U(0, 1) constant per channel
        assert len({out[c][box[c]][0].item() for c in range(3)}) == 3  # drawn per channel
        assert 0.1 * 1024 * 0.5 <= h * w <= 0.3 * 1024 * 1.5
        aspects.append(h / w)
    # Uniform aspect ratios in [0.3, 3.3] have mean ~1.8; log-uniform ones (torchvision) ~1.2.
    assert 1.5 < sum(aspects) / len(aspects) < 2.1


def test_random_erasing_style_selects_the_transform():
    default = build_train_transform({"random_erasing": 0.5}, 32, (0.5,) * 3, (0.5,) * 3, native_size=32)
    seed = build_train_transform(
        {"random_erasing": 0.5, "random_erasing_style": "clear_vit"}, 32, (0.5,) * 3, (0.5,) * 3, native_size=32
    )
    assert not any(isinstance(t, ChannelConstantErasing) for t in default.transforms)
    assert sum(isinstance(t, ChannelConstantErasing) for t in seed.transforms) == 1
    with pytest.raises(ConfigError, match="recipe.augment.random_erasing_style: unknown style 'timm'"):
        build_train_transform({"random_erasing_style": "timm"}, 32, (0.5,) * 3, (0.5,) * 3, native_size=32)
