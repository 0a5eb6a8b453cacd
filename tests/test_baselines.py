"""timm baselines at 32 px: the seed table's params and MACs, attention maps, the sweep config."""

import pytest
import torch

from conftest import compose_config
from vitlab.registry_nodes import model_options
from vitlab.families import BaselineClassifier
from vitlab.measure import image_flops
from vitlab.models import create_model
from vitlab.models.baselines import timm_attention_maps

# (registry name, seed params, seed MACs) from docs/seeds/outgrid.md classes at 32 px.
SEED_TABLE = [
    ("deit_tiny", 5.38e6, 347e6),
    ("deit_small", 21.38e6, 1.38e9),
    ("swin_tiny", 27.57e6, 358e6),
    ("maxvit_nano", 17.38e6, 305e6),
    ("maxvit_tiny", 30.43e6, 444e6),
    ("resnet18", 11.22e6, 557e6),
    ("resnet50", 23.71e6, 1.30e9),
    ("convnext_tiny", 27.89e6, 364e6),
    ("efficientnetv2_s", 20.31e6, 238e6),
]
HAS_FAITHFUL = {"swin_tiny", "maxvit_nano", "maxvit_tiny"}


def _macs(model) -> tuple[float, float]:
    """(all MACs, MACs without SDPA): the seed counted with fvcore, which skips SDPA calls."""
    flops = image_flops(model, 32)
    return flops.macs, flops.macs_without_sdpa


@pytest.mark.parametrize("name, params, macs", SEED_TABLE)
def test_faithful_builds_match_the_seed_table(name, params, macs):
    model = create_model(name, num_classes=100, **({"faithful": True} if name in HAS_FAITHFUL else {}))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params < 0.01, count
    total, without_sdpa = _macs(model)
    assert abs(without_sdpa - macs) / macs < 0.05, (total, without_sdpa)


def test_faithful_maxvit_does_not_attend_and_the_corrected_one_does():
    x = torch.randn(1, 3, 32, 32)
    faithful = timm_attention_maps(create_model("maxvit_tiny", faithful=True).eval(), x)
    corrected = timm_attention_maps(create_model("maxvit_tiny").eval(), x)
    assert {m.shape[-1] for m in faithful.values()} == {1}  # 1x1 partitions: each token sees itself
    assert min(m.shape[-1] for m in corrected.values()) == 4  # 2x2 windows and grids everywhere


def test_corrected_swin_builds_its_masks_for_the_16x16_token_grid():
    corrected = create_model("swin_tiny")
    faithful = create_model("swin_tiny", faithful=True)
    assert corrected.layers[0].blocks[0].input_resolution == (16, 16)
    assert faithful.layers[0].blocks[0].input_resolution == (8, 8)  # built for patch 4, fed 16x16
    x = torch.randn(2, 3, 32, 32)
    assert corrected(x).shape == faithful(x).shape == (2, 100)


@pytest.mark.parametrize("name", ["deit_tiny", "swin_tiny", "maxvit_nano"])
def test_transformer_baselines_expose_row_stochastic_attention(name):
    module = BaselineClassifier(net={"name": name, "num_classes": 10}).eval()
    assert module.has_attention_maps
    x = torch.randn(2, 3, 32, 32)
    before = [m.fused_attn for m in module.net.modules() if hasattr(m, "fused_attn")]
    maps = module.attention_maps(x)
    assert maps and module.attention_normalisation_error(maps) < 1e-4
    assert [m.fused_attn for m in module.net.modules() if hasattr(m, "fused_attn")] == before  # switched back
    if name == "deit_tiny":
        assert maps["blocks.0.attn"].weights.shape == (2, 3, 65, 65) and maps["blocks.0.attn"].prefix_tokens == 1


def test_convnets_have_no_attention_maps():
    module = BaselineClassifier(net={"name": "resnet18", "num_classes": 10})
    assert not module.has_attention_maps
    with pytest.raises(NotImplementedError):
        module.attention_maps(torch.randn(1, 3, 32, 32))


def test_sweep_config_lists_outgrid_and_every_baseline(tmp_path):
    cfg = compose_config(["sweep=baselines_cifar32"], hydra=True)
    models = cfg.hydra.sweeper.params.model.split(",")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(models) == {"outgrid_7m", "deit_tiny", "deit_small", "swin_tiny", "maxvit_nano", "maxvit_tiny",
                           "resnet18", "resnet50", "convnext_tiny", "efficientnetv2_s"}
    assert set(models) <= set(model_options())
    assert cfg.recipe.optimizer.lr == 5e-4 and cfg.data.num_classes == 100
    assert compose_config(["model=deit_tiny"], tmp_path).recipe.batch_size == 64  # baselines use recipe=outgrid
