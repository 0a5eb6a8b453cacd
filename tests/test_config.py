"""Composition of every model x data x hardware config, and the start-up checks."""

import functools

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from vitlab.registry_nodes import model_options
from vitlab.instantiate import build
from vitlab.config import HardwareConfig, RecipeConfig, split_batch, to_hardware, to_recipe
from vitlab.errors import ConfigError

MODELS = model_options()
DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MANDATORY = {
    "image_folder": ["data.root=/nowhere", "data.num_classes=10"],
    # 4-pixel-patch models at ImageNet-100's 256 px would need GBs of attention maps to build and run.
    "imagenet100": ["data.img_size=64"],
}


@functools.cache
def _hardware_nodes() -> dict:
    return {hw: compose_config([f"hardware={hw}"]).hardware for hw in HARDWARE}


@functools.cache
def _builds(model: str, img_size: int) -> tuple[int, int]:
    """(logits dim, num_classes) of the model's network built at ``img_size``, once per size."""
    cfg = compose_config([f"model={model}", "data=synthetic", f"data.img_size={img_size}", "data.num_classes=7"])
    net = build(cfg.model, recipe=OmegaConf.to_container(cfg.recipe, resolve=True)).net.eval()
    with torch.no_grad():
        return net(torch.randn(1, 3, img_size, img_size)).shape[-1], cfg.model.net.num_classes


# The data configs by the image size the network is built at (imagenet100 at its MANDATORY 64 px).
DATA_64 = {"cifar100_64", "imagenet100", "tinyimagenet", "tinyimagenet_c"}
DATA_32 = [d for d in DATA if d not in DATA_64]
# Models whose config reads more of the data node than its size and class count.
READS_DATA = {"vit_diff_entropy"}  # entropy_mean / entropy_std: ${data.mean} / ${data.std}


def _covering_pairs() -> set[tuple[str, str]]:
    """Every model at one 32 px and one 64 px data config (so each network is built at both sizes),
    the data configs taken in turn so each is used several times, and the models that read the data
    node with every data config."""
    pairs = set()
    for i, model in enumerate(MODELS):
        pairs |= {(model, DATA_32[i % len(DATA_32)]), (model, sorted(DATA_64)[i % len(DATA_64)])}
    pairs |= {(model, data) for model in READS_DATA for data in DATA}
    return pairs


COVERING = _covering_pairs()
# The default run composes the covering pairs; the whole model x data product runs with -m slow.
PAIRS = [pytest.param(m, d, marks=() if (m, d) in COVERING else pytest.mark.slow) for m in MODELS for d in DATA]


def test_the_covering_pairs_use_every_model_and_every_data_config():
    assert {m for m, _ in COVERING} == set(MODELS) and {d for _, d in COVERING} == set(DATA)
    assert DATA_64 <= set(DATA) and READS_DATA <= set(MODELS)
    for model in MODELS:  # each network is built at both image sizes
        assert {d in DATA_64 for m, d in COVERING if m == model} == {True, False}, model


@pytest.mark.parametrize("model, data", PAIRS)
def test_every_model_data_hardware_combination_composes(model, data, tmp_path):
    """Each model x data pair is composed by Hydra; each hardware profile's node is then swapped in
    (the hardware group only fills ``hardware``) and everything resolved and checked."""
    cfg = compose_config([f"model={model}", f"data={data}", *MANDATORY.get(data, [])], tmp_path)
    assert cfg.data.img_size == (64 if data in DATA_64 else 32), "update DATA_64 for this data config's size"
    for hardware, node in _hardware_nodes().items():
        cfg.hardware = node
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["model"]["net"]["num_classes"] == resolved["data"]["num_classes"]
        assert resolved["model"]["net"]["img_size"] == resolved["data"]["img_size"]
        assert resolved["trainer"]["max_epochs"] == resolved["recipe"]["epochs"]
        assert resolved["trainer"]["precision"] == resolved["hardware"]["precision"]
        assert resolved["data"]["num_workers"] == resolved["hardware"]["num_workers"]
        recipe = to_recipe(cfg.recipe)
        if hardware in ("gpu", "rtx3060_6gb") and not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="hardware.accelerator: gpu asked for, but no CUDA GPU"):
                to_hardware(cfg.hardware)
            continue
        hw = to_hardware(cfg.hardware)
        micro, accumulate = split_batch(recipe, hw)
        assert micro * accumulate * hw.devices == recipe.batch_size
    # The network depends on the data only through img_size (and the head's width).
    assert _builds(model, cfg.data.img_size) == (7, 7)


def test_model_files_select_their_seed_recipe_and_the_command_line_wins(tmp_path):
    assert compose_config(["model=mini_vit"], tmp_path).recipe.batch_size == 512
    assert compose_config(["model=mini_vit", "recipe=outgrid"], tmp_path).recipe.optimizer.lr == 5e-4


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    assert cfg.task_name == experiment
    to_recipe(cfg.recipe)


def test_seed_recipes_match_the_specs(tmp_path):
    mini = to_recipe(compose_config(["recipe=mini_vit"], tmp_path).recipe)
    assert (mini.epochs, mini.batch_size, mini.optimizer.lr, mini.optimizer.weight_decay) == (250, 512, 2e-3, 0.05)
    assert (mini.schedule.warmup_epochs, mini.label_smoothing, mini.repeated_aug) == (10, 0.1, 3)
    assert (mini.mixing.cutmix_alpha, mini.mixing.mixup_alpha, mini.mixing.prob) == (1.0, 0.0, 0.5)
    assert mini.augment.auto_augment == "cifar10" and mini.augment.random_erasing == 0.25
    out = to_recipe(compose_config(["recipe=outgrid"], tmp_path).recipe)
    assert (out.epochs, out.optimizer.lr, out.schedule.warmup_ratio, out.schedule.min_lr) == (100, 5e-4, 0.05, 1e-6)
    assert (out.mixing.mixup_alpha, out.mixing.cutmix_alpha, out.mixing.prob, out.grad_clip) == (0.8, 1.0, 0.5, 1.0)
    assert out.label_smoothing == 0.1 and out.channels_last


def test_rtx3060_profile_keeps_the_effective_batch(tmp_path):
    cfg = compose_config(["hardware=rtx3060_6gb"], tmp_path)
    hw = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HardwareConfig), {**cfg.hardware, "accelerator": "cpu", "precision": "bf16-mixed"}))
    assert cfg.hardware.precision == "16-mixed"
    assert split_batch(to_recipe(cfg.recipe), hw) == (128, 4)  # 512 = 128 x 4
    assert split_batch(RecipeConfig(batch_size=64), hw) == (64, 1)


@pytest.mark.parametrize(
    "node, convert, message",
    [
        ({"optimizer": {"lr": -1.0}}, to_recipe, "recipe.optimizer.lr: must be positive"),
        ({"schedule": {"warmup_epochs": 2, "warmup_ratio": 0.1}}, to_recipe, "recipe.schedule: give warmup_epochs or warmup_ratio"),
        ({"mixing": {"prob": 2.0}}, to_recipe, r"recipe.mixing.prob: must be in \[0, 1\]"),
        ({"batch_size": "many"}, to_recipe, "recipe.batch_size"),
        ({"epochs": 0}, to_recipe, "recipe.epochs: must be positive"),
        ({"not_a_key": 1}, to_recipe, "recipe.not_a_key"),
        ({"precision": "8-bit"}, to_hardware, "hardware.precision: unknown precision '8-bit'"),
        ({"accelerator": "cpu", "precision": "16-mixed"}, to_hardware, "hardware.precision: 16-mixed needs a CUDA GPU"),
    ],
)
def test_bad_values_name_the_key(node, convert, message):
    with pytest.raises(ConfigError, match=message):
        convert(node)


def test_batch_not_divisible_by_devices():
    with pytest.raises(ConfigError, match="recipe.batch_size: 100 is not divisible by hardware.devices=3"):
        split_batch(RecipeConfig(batch_size=100), HardwareConfig(accelerator="cpu", devices=3))
    with pytest.raises(ConfigError, match="hardware.batch_per_device: 48 does not divide"):
        split_batch(RecipeConfig(batch_size=64), HardwareConfig(accelerator="cpu", batch_per_device=48))
