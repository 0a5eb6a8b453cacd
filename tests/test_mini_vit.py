import pytest
import torch

from vitlab.errors import ConfigError
from vitlab.models import create_model, list_models


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, expected", [("mini_vit", 674_890), ("mini_vit_d192", 2_674_762), ("mini_vit_d192_l12", 3_562_378)]
)
def test_parameter_counts_match_the_seed(name, expected):
    assert _params(create_model(name, num_classes=10)) == expected


def test_seed_bias_pattern_and_buffers():
    model = create_model("mini_vit")
    block = model.blocks[0]
    assert block.attn.qkv.bias is None and block.mlp.fc1.bias is None and block.mlp.fc2.bias is None
    assert block.attn.proj.bias is not None
    assert not any("pos_embed" in k for k in model.state_dict())  # fixed table, rebuilt from the config
    assert torch.count_nonzero(model.cls_token) == 0 and not list(model.position.parameters())  # no learnable table
    assert model.position.pos_embed.shape == (1, 64, 96)  # patches only: the CLS tokens carry no position
    torch.testing.assert_close(model.position.pos_embed[0, 1, :4], torch.tensor([0.8415, 0.5403, 0.6298, 0.7768]), atol=1e-4, rtol=0)


def test_forward_shapes_head_on_concatenated_cls_tokens():
    model = create_model("mini_vit", num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (3, 66, 96)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (3, 192)
    torch.testing.assert_close(pre, torch.cat((feats[:, 0], feats[:, 1]), dim=1))
    assert model(x).shape == (3, 7)


def test_attention_maps_are_row_stochastic_and_match_forward():
    torch.manual_seed(0)
    model = create_model("mini_vit").eval()
    x = torch.randn(2, 3, 32, 32)
    typed = model.attention_maps(x)
    assert [n for n in typed if n.endswith(".cls")] == [f"blocks.{i}.cls" for i in range(9)]  # overlays only
    maps = {n: m.weights for n, m in typed.items() if m.layout == "tokens"}
    assert list(maps) == [f"blocks.{i}" for i in range(9)]
    for m in maps.values():
        assert m.shape == (2, 12, 66, 66)
        assert (m >= 0).all()
        assert (m.sum(-1) - 1).abs().max() < 1e-4


def test_every_parameter_gets_a_gradient():
    model = create_model("mini_vit", num_classes=5, cls_init="trunc_normal")
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_other_image_sizes_and_no_weight_decay():
    model = create_model("mini_vit", img_size=64, patch_size=8)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert model.no_weight_decay() == {"cls_token"}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"img_size": 30}, "img_size 30 is not divisible by patch_size 4"),
        ({"num_heads": 7}, "embed_dim 96 is not divisible by num_heads 7"),
        ({"emed_dim": 8}, "model.net.emed_dim"),
    ],
)
def test_bad_settings_raise_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        create_model("mini_vit", **kwargs)


def test_unknown_network_lists_choices():
    with pytest.raises(ConfigError, match="model.net.name: unknown network 'nope'.*mini_vit"):
        create_model("nope")
    assert "mini_vit" in list_models("mini_*")
