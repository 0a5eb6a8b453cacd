"""The clear-vit ViT family: parameter counts, attention/PE properties, configs and smoke training."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from vitlab.config import OptimizerConfig, register_configs, to_recipe
from vitlab.errors import ConfigError
from vitlab.families import ImageClassifier
from vitlab.layers import attend
from vitlab.layers.cpe import PEG
from vitlab.layers.rope import RoPE2D, apply_rotary, grid_positions, rope_magnitudes
from vitlab.layers.vit_attention import (
    ALiBi2DAttention,
    AttentionContext,
    DifferentialAttention,
    DiffSimAttention,
    SuppressionAttention,
    ViTAttention,
    alibi_bias_2d,
    alibi_slopes,
    differential_lambda_init,
    first_difference,
    patch_luminance_entropy,
)
from vitlab.models import create_model
from vitlab.models.vit import default_patch_size
from vitlab.optim import build_optimizer
from vitlab.training import train

TABLE = ["vit_pe_dropout", "vit_diffsim", "vit", "vit_suppress", "vit_rope", "vit_diff_entropy", "vit_rope_mixed"]
EXTRAS = ["vit_rope_axial", "vit_alibi", "vit_cpe"]
VARIANTS = TABLE + EXTRAS
BASELINE_PARAMS = 5_555_044  # docs/seeds/clear_vit.md, at 256 px / 100 classes
EXTRA_PARAMS = {  # relative to the baseline
    "vit": 0,
    "vit_pe_dropout": 0,
    "vit_diffsim": 0,
    "vit_suppress": 12 * 3 * 9,  # one 3x3 kernel per head and layer: 5,555,368
    "vit_rope": 2304 - 49_152,  # mixed frequencies 2 x 12 x (3 x 32), no position table: 5,508,196
    "vit_diff_entropy": 12 * (64 - 4 * 192),  # RMSNorm gain; no q/k/v/out biases: 5,546,596
    "vit_rope_mixed": 2304,  # 5,557,348
    "vit_rope_axial": -49_152,  # fixed frequencies, no position table
    "vit_alibi": -49_152,  # fixed slopes, no position table
    "vit_cpe": 192 * 9 + 192 - 49_152,  # one depthwise 3x3 conv with bias, no position table
}
TINY = dict(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=10)


# Tiny models: on a shared 2-core machine a second intra-op thread mostly waits at barriers (a
# 2-block forward/backward took 0.6 s with 2 threads, 5 ms with 1).
pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _tiny(name, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, **{**TINY, **kwargs}).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # the zero head would hide gradient paths
    return model


# ----------------------------------------------------------------------------- parameter counts


def test_baseline_has_the_spec_parameter_count_and_layout():
    model = create_model("vit")
    assert _params(model) == BASELINE_PARAMS
    assert model.patch_size == 16 and model.grid == (16, 16)
    assert model.position.pos_embed.shape == (1, 256, 192) and model.cls_token.shape == (1, 1, 192)
    block = model.blocks[0]
    assert block.norm1.eps == 1e-6 and model.norm.eps == 1e-6
    assert block.attn.num_heads == 3 and block.attn.head_dim == 64
    assert torch.count_nonzero(block.attn.qkv.bias) == 0 and torch.count_nonzero(block.attn.proj.bias) == 0
    assert block.attn.qkv.weight.abs().max() <= 0.125 and block.attn.qkv.weight.abs().max() > 0.12
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    std = math.sqrt(1 / 768) / 0.87962566103423978
    assert model.patch_embed.weight.abs().max() <= 2 * std
    assert model(torch.randn(1, 3, 256, 256)).shape == (1, 100)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_adds_the_listed_parameters(name):
    assert _params(create_model(name)) - BASELINE_PARAMS == EXTRA_PARAMS[name]


def test_plain_differential_attention_adds_the_lambda_vectors():
    model = create_model("vit_diff_entropy", attention={"_target_": "diff", "lambda_mode": "learned"})
    assert _params(model) == BASELINE_PARAMS + EXTRA_PARAMS["vit_diff_entropy"] + 12 * 4 * 32


def test_default_patch_size_follows_the_image_size():
    assert [default_patch_size(s) for s in (32, 64, 224, 256)] == [4, 4, 16, 16]
    assert create_model("vit", img_size=224).grid == (14, 14)
    assert create_model("vit", img_size=32, patch_size=8).grid == (4, 4)


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("kind", ["axial", "mixed"])
def test_rope_scores_depend_only_on_the_relative_offset(kind):
    torch.manual_seed(0)
    rope = RoPE2D(num_heads=3, head_dim=16, kind=kind, theta=10.0)
    q, k = torch.randn(2, 3, 1 + 12, 16), torch.randn(2, 3, 1 + 12, 16)
    xs, ys = grid_positions(3, 4)

    def patch_scores(dx, dy):
        rq, rk = rope(q, k, (3, 4), num_prefix=1, positions=(xs + dx, ys + dy))
        return rq[:, :, 1:] @ rk[:, :, 1:].transpose(-2, -1)

    base = patch_scores(0, 0)
    torch.testing.assert_close(patch_scores(5, -2), base, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(patch_scores(0.5, 7), base, atol=1e-4, rtol=1e-4)
    # not trivially so: the rotation changes the scores, and moving one token alone changes them
    assert not torch.allclose(base, q[:, :, 1:] @ k[:, :, 1:].transpose(-2, -1), atol=1e-3)
    rq, _ = rope(q, k, (3, 4), positions=(xs + 1, ys))
    _, rk = rope(q, k, (3, 4), positions=(xs, ys))
    assert not torch.allclose(rq[:, :, 1:] @ rk[:, :, 1:].transpose(-2, -1), base, atol=1e-3)


@pytest.mark.parametrize("kind", ["axial", "mixed"])
def test_rope_leaves_the_cls_token_alone(kind):
    rope = RoPE2D(num_heads=2, head_dim=8, kind=kind)
    q, k = torch.randn(1, 2, 1 + 4, 8), torch.randn(1, 2, 1 + 4, 8)
    rq, rk = rope(q, k, (2, 2), num_prefix=1)
    assert torch.equal(rq[:, :, 0], q[:, :, 0]) and torch.equal(rk[:, :, 0], k[:, :, 0])
    assert not torch.allclose(rq[:, :, 2:], q[:, :, 2:])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation


def test_rope_rotation_is_the_interleaved_complex_product():
    torch.manual_seed(0)
    t, phi = torch.randn(2, 3, 5, 8), torch.randn(3, 5, 4)
    rotation = torch.polar(torch.ones_like(phi), phi)
    expected = torch.view_as_real(torch.view_as_complex(t.reshape(2, 3, 5, 4, 2)) * rotation)
    torch.testing.assert_close(apply_rotary(t, phi), expected.flatten(-2))


def test_rope_frequencies_follow_the_spec():
    mag = rope_magnitudes(64, 10.0)
    torch.testing.assert_close(mag, torch.tensor([10.0 ** (-4 * k / 64) for k in range(16)], dtype=torch.float64))
    mixed = RoPE2D(num_heads=3, head_dim=64, kind="mixed", theta=10.0)
    assert mixed.freqs.shape == (2, 3, 32) and mixed.freqs.requires_grad
    f = mixed.freqs.detach().double()
    torch.testing.assert_close(f.norm(dim=0), torch.cat((mag, mag))[None].expand(3, -1))
    dirs = torch.atan2(f[1], f[0])  # pairs 16..31 point pi/2 further than pairs 0..15
    turn = torch.remainder(dirs[:, 16:] - dirs[:, :16], 2 * math.pi)
    torch.testing.assert_close(turn, torch.full((3, 16), math.pi / 2, dtype=torch.float64))
    axial = RoPE2D(num_heads=3, head_dim=64, kind="axial", theta=100.0)
    assert "freqs" not in dict(axial.named_parameters()) and "freqs" not in axial.state_dict()
    phi = axial.angles(torch.tensor([3.0]), torch.tensor([5.0]))[0, 0]
    torch.testing.assert_close(phi[:16], 3 * rope_magnitudes(64, 100.0).float())
    torch.testing.assert_close(phi[16:], 5 * rope_magnitudes(64, 100.0).float())


def test_rope_shapes_for_depth_above_one():
    model = create_model("vit_rope_mixed")  # the seed's refactor broke here
    assert [b.attn.rope.freqs.shape for b in model.blocks] == [(2, 3, 32)] * 12


# ----------------------------------------------------------------------------- attention variants


def _copy(src, dst):
    """``dst`` with the weights it shares with ``src``."""
    shared = {k: v for k, v in src.state_dict().items() if k in dst.state_dict()}
    dst.load_state_dict(shared, strict=False)
    return dst


@pytest.mark.parametrize("mode", ["token_conv", "grid"])
def test_suppression_with_a_zero_kernel_is_standard_attention(mode):
    torch.manual_seed(0)
    plain = ViTAttention(32, 4).eval()
    supp = _copy(plain, SuppressionAttention(32, 4, mode=mode)).eval()
    ctx = AttentionContext(grid=(3, 3), num_prefix=1)
    x = torch.randn(2, 10, 32)
    ref, ref_w = plain(x, need_weights=True, ctx=ctx)
    out, w = supp(x, need_weights=True, ctx=ctx)
    assert not torch.allclose(out, ref, atol=1e-4)  # the random kernel does something
    with torch.no_grad():
        supp.kernel.zero_()
    out, w = supp(x, need_weights=True, ctx=ctx)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)


def test_token_conv_suppression_matches_the_spec_formula():
    torch.manual_seed(0)
    attn = SuppressionAttention(8, 2, mode="token_conv")
    S = torch.randn(1, 2, 5, 5)
    K = attn.kernel.detach()[:, 0]  # (heads, 3, 3)
    expected = S.clone()
    for h in range(2):
        for i in range(5):
            for j in range(5):
                for a in (-1, 0, 1):
                    for b in (-1, 0, 1):
                        if 0 <= i + a < 5 and 0 <= j + b < 5:
                            expected[0, h, i, j] -= K[h, a + 1, b + 1] * S[0, h, i + a, j + b]
    torch.testing.assert_close(attn.suppress(S, None), expected)


def test_grid_suppression_uses_patch_grid_neighbours_and_spares_cls():
    torch.manual_seed(0)
    attn = SuppressionAttention(8, 2, mode="grid")
    S = torch.randn(1, 2, 1 + 6, 7)  # grid 2 x 3
    K = attn.kernel.detach()[0, 0]
    expected = S.clone()
    for r in range(2):
        for c in range(3):
            for a in (-1, 0, 1):
                for b in (-1, 0, 1):
                    if (a, b) != (0, 0) and 0 <= r + a < 2 and 0 <= c + b < 3:
                        expected[0, :, 1 + r * 3 + c] -= K[a + 1, b + 1] * S[0, :, 1 + (r + a) * 3 + (c + b)]
    out = attn.suppress(S, AttentionContext(grid=(2, 3)))
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[:, :, 0], S[:, :, 0])


def test_diffsim_boundary_handling_as_configured():
    t = (torch.arange(7.0) + 1).square().view(1, 1, 7, 1)  # CLS + a 2 x 3 grid: 1, 4, 9, ..., 49
    cases = {
        "sequence": [1, 3, 5, 7, 9, 11, 13],  # p0 - CLS, and p3 - p2 across the row break
        "patches": [1, 4, 5, 7, 9, 11, 13],  # CLS raw, p0 raw
        "rows": [1, 4, 5, 7, 25, 11, 13],  # also p3 (first of row 2) raw
    }
    for boundary, expected in cases.items():
        got = first_difference(t, boundary, grid=(2, 3), num_prefix=1).flatten().tolist()
        assert got == expected, boundary


@pytest.mark.parametrize("boundary", ["sequence", "patches", "rows"])
def test_diffsim_attention_scores_use_differenced_queries_and_keys(boundary):
    torch.manual_seed(0)
    attn = DiffSimAttention(16, 2, boundary=boundary).eval()
    ctx = AttentionContext(grid=(2, 2), num_prefix=1)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    dq, dk = first_difference(q, boundary, (2, 2)), first_difference(k, boundary, (2, 2))
    probs = torch.softmax(dq @ dk.transpose(-2, -1) / math.sqrt(8), dim=-1)
    out, w = attn(x, need_weights=True, ctx=ctx)
    torch.testing.assert_close(w, probs)
    fused, _ = attn(x, ctx=ctx)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)
    expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _zero_lambda(attn: DifferentialAttention) -> None:
    """lambda = exp(0) - exp(q2.k2) + lambda_init = 0."""
    with torch.no_grad():
        for p in (attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2):
            p.zero_()
        attn.lambda_q2[0] = attn.lambda_k2[0] = math.sqrt(math.log(1 + attn.lambda_init))


def test_differential_attention_with_lambda_zero_is_standard_attention():
    torch.manual_seed(0)
    attn = DifferentialAttention(32, 2, layer_index=3, lambda_mode="learned").eval()
    _zero_lambda(attn)
    assert abs(attn.learned_lambda().item()) < 1e-6
    x = torch.randn(2, 6, 32)
    out, w = attn(x, need_weights=True)
    q, k, v = attn.qkv(x).chunk(3, -1)
    q1, k1 = q.view(2, 6, 4, 8).transpose(1, 2)[:, 0::2], k.view(2, 6, 4, 8).transpose(1, 2)[:, 0::2]
    v = v.view(2, 6, 2, 16).transpose(1, 2)
    std_out, std_probs = attend(q1, k1, v, need_weights=True)  # plain softmax attention, scale 1/sqrt(8)
    torch.testing.assert_close(w[""], std_probs, atol=1e-6, rtol=1e-5)
    expected = attn.proj((attn.norm(std_out) * (1 - attn.lambda_init)).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        attn.lambda_q1.fill_(0.3), attn.lambda_k1.fill_(0.3)  # lambda != 0: no longer the standard map
    assert not torch.allclose(attn(x, need_weights=True)[1][""], std_probs, atol=1e-4)


def test_entropy_modulation_replaces_lambda_per_query():
    torch.manual_seed(0)
    learned = DifferentialAttention(32, 2, layer_index=0, lambda_mode="learned").eval()
    replace = _copy(learned, DifferentialAttention(32, 2, layer_index=0, lambda_mode="replace")).eval()
    x = torch.randn(2, 5, 32)
    # a modulation of 0 everywhere = lambda 0
    _zero_lambda(learned)
    zero = AttentionContext(grid=(2, 2), shared={"pixel_entropy": torch.zeros(2, 5)})
    torch.testing.assert_close(replace(x, ctx=zero)[0], learned(x)[0], atol=1e-5, rtol=1e-5)
    # per-query: row i of the map is A1[i] - H_i A2[i]
    h = torch.rand(2, 5)
    _, maps = replace(x, need_weights=True, ctx=AttentionContext(grid=(2, 2), shared={"pixel_entropy": h}))
    w, a1, a2 = maps[""], maps["softmax1"], maps["softmax2"]
    torch.testing.assert_close(w, a1 - h[:, None, :, None] * a2)
    torch.testing.assert_close(w.sum(-1), (1 - h)[:, None, :].expand(2, 2, 5), atol=1e-5, rtol=1e-5)
    assert not hasattr(replace, "lambda_q1")


def test_differential_lambda_init_depends_on_depth_and_norm_is_per_head():
    values = [differential_lambda_init(i) for i in range(12)]
    assert values[0] == pytest.approx(0.2) and values[1] == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    assert values[11] == pytest.approx(0.7777, abs=1e-3) and values == sorted(values)
    model = create_model("vit_diff_entropy")
    assert [b.attn.lambda_init for b in model.blocks] == values
    attn = model.blocks[0].attn
    assert attn.norm.weight.shape == (64,) and attn.qkv.bias is None and attn.proj.bias is None


def test_alibi_bias_is_2d_bidirectional_and_spares_cls():
    torch.testing.assert_close(alibi_slopes(3).float(), torch.tensor([0.1575, 0.0248, 0.0039]), atol=1e-4, rtol=0)
    bias = alibi_bias_2d(3, (3, 4), num_prefix=1)
    assert bias.shape == (3, 13, 13)
    assert torch.count_nonzero(bias[:, 0]) == 0 and torch.count_nonzero(bias[:, :, 0]) == 0
    torch.testing.assert_close(bias, bias.transpose(1, 2))
    # patch 0 at (0, 0), patch 6 at column 2, row 1: distance sqrt(5)
    torch.testing.assert_close(bias[:, 1, 7], -alibi_slopes(3).float() * math.sqrt(5))
    manhattan = alibi_bias_2d(3, (3, 4), distance="manhattan")
    torch.testing.assert_close(manhattan[:, 1, 7], -alibi_slopes(3).float() * 3)


def test_alibi_attention_on_sdpa_equals_softmax_of_biased_scores():
    torch.manual_seed(0)
    attn = ALiBi2DAttention(24, 3).eval()
    ctx = AttentionContext(grid=(2, 3))
    x = torch.randn(2, 7, 24)
    fused, none = attn(x, ctx=ctx)
    explicit, w = attn(x, need_weights=True, ctx=ctx)
    assert none is None
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    expected = torch.softmax(attn.scores(x, ctx) + alibi_bias_2d(3, (2, 3)), dim=-1)
    torch.testing.assert_close(w, expected)


def test_cpe_at_zero_init_is_the_identity_and_never_touches_cls():
    x = torch.randn(2, 1 + 12, 16)
    peg = PEG(16, zero_init=True)
    torch.testing.assert_close(peg(x, (3, 4)), x)  # CLS included (the seed returned 2 x CLS)
    peg = PEG(16)
    y = peg(x, (3, 4))
    assert torch.equal(y[:, 0], x[:, 0])
    fmap = x[:, 1:].transpose(1, 2).reshape(2, 16, 3, 4)
    torch.testing.assert_close(y[:, 1:], x[:, 1:] + peg.proj(fmap).flatten(2).transpose(1, 2))


def test_patch_luminance_entropy():
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    levels = torch.arange(256.0).view(16, 16) / 255  # one patch holding every level once
    images = torch.stack((levels.expand(3, 16, 16), torch.full((3, 16, 16), 0.3)))
    ent = patch_luminance_entropy((images - 0.5) / 0.5, 16, mean, std)
    torch.testing.assert_close(ent, torch.tensor([[1.0], [0.0]]), atol=1e-5, rtol=0)
    half = torch.zeros(1, 3, 4, 4)
    half[..., 2:] = 1.0
    ent = patch_luminance_entropy((half - 0.5) / 0.5, 4, mean, std)
    torch.testing.assert_close(ent, torch.tensor([[math.log(2) / math.log(256)]]))


# ----------------------------------------------------------------------------- whole networks


@pytest.mark.parametrize("name", VARIANTS)
def test_attention_maps_rows_sum_to_one_and_sdpa_equals_explicit(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    typed = model.attention_maps(x)
    maps = {n: m.weights for n, m in typed.items()}
    for i in range(2):
        full = maps[f"blocks.{i}"]
        assert full.shape == (2, 2, 65, 65)
        assert maps[f"blocks.{i}.cls"].shape == (2, 2, 8, 8)
        torch.testing.assert_close(maps[f"blocks.{i}.cls"].flatten(2), full[:, :, 0, 1:])
        softmax = [maps[f"blocks.{i}.softmax1"], maps[f"blocks.{i}.softmax2"]] if name == "vit_diff_entropy" else [full]
        for m in softmax:
            assert (m >= 0).all()
            torch.testing.assert_close(m.sum(-1), torch.ones(2, 2, 65), atol=1e-5, rtol=0)
    assert ImageClassifier.attention_normalisation_error(typed) < 1e-5
    # the forward pass (SDPA wherever the variant allows it) equals the explicit path behind the maps
    explicit = model._forward_tokens(x, need_weights=True)[0]
    torch.testing.assert_close(model.forward_features(x), explicit, atol=1e-5, rtol=1e-5)


def test_differential_maps_are_not_row_stochastic_but_pass_the_check():
    model = _tiny("vit_diff_entropy")
    maps = model.attention_maps(torch.randn(2, 3, 32, 32))
    assert (maps["blocks.0"].weights.sum(-1) - 1).abs().max() > 1e-3  # rows sum to 1 - H_i
    assert maps["blocks.0"].dim is None and not maps["blocks.0"].measure  # the map says it is no distribution
    assert ImageClassifier.attention_normalisation_error(maps) < 1e-5
    maps["blocks.1.softmax2"].weights = maps["blocks.1.softmax2"].weights * 1.1
    assert ImageClassifier.attention_normalisation_error(maps) > 0.05


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_gradient(name):
    model = _tiny(name).train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


def test_pe_dropout_only_in_training_and_spares_cls():
    model = _tiny("vit_pe_dropout", position={"_target_": "learned", "table_drop": 0.5})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    tokens = model._embed(x, model.grid)
    assert torch.equal(tokens[:, 0], model.cls_token[0].expand(2, -1))
    patches = model.patch_embed(x).flatten(2).transpose(1, 2)
    dropped = tokens[:, 1:] - patches
    table = model.position.pos_embed.expand(2, -1, -1)
    kept = dropped.abs() > 0
    torch.testing.assert_close(dropped[kept], 2 * table[kept], atol=1e-5, rtol=1e-5)  # inverted scaling
    assert 0.3 < kept.float().mean() < 0.7
    assert not torch.equal(kept[0], kept[1])  # one mask per image


def test_no_weight_decay_covers_tables_frequencies_kernels_and_lambdas():
    cases = {
        "vit_rope_mixed": {"cls_token", "position.pos_embed", "blocks.0.attn.rope.freqs", "blocks.1.attn.rope.freqs"},
        "vit_suppress": {"cls_token", "position.pos_embed", "blocks.0.attn.kernel", "blocks.1.attn.kernel"},
        "vit_alibi": {"cls_token"},
    }
    for name, expected in cases.items():
        assert _tiny(name).no_weight_decay() == expected
    model = _tiny("vit_diff_entropy", attention={"_target_": "diff", "lambda_mode": "learned"})
    names = model.no_weight_decay()
    assert {"blocks.1.attn.lambda_q1", "blocks.1.attn.lambda_k2"} <= names
    assert names <= dict(model.named_parameters()).keys()
    model = _tiny("vit_rope_mixed")
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=0.05))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        should_decay = p.ndim >= 2 and n not in model.no_weight_decay()
        assert (id(p) in decayed) == should_decay, n


def test_positional_encodings_without_a_table_take_other_sizes():
    x = torch.randn(1, 3, 48, 40)
    for name in ("vit_rope", "vit_rope_axial", "vit_alibi", "vit_cpe"):
        assert _tiny(name)(x).shape == (1, 10)
    with pytest.raises(ValueError, match="position table is 8x8.*not interpolated"):
        _tiny("vit")(x)


def test_seed_init_is_an_option():
    legacy = create_model("vit_suppress", attention={"_target_": "suppress", "seed_init": True}, **TINY)
    assert torch.count_nonzero(legacy.blocks[0].attn.qkv.bias) > 0  # the seed kept default biases
    assert torch.count_nonzero(create_model("vit_suppress", **TINY).blocks[0].attn.qkv.bias) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"img_size": 30, "patch_size": 4}, "img_size 30 is not divisible by patch_size 4"),
        ({"num_heads": 5}, "embed_dim 192 is not divisible by num_heads 5"),
        ({"attention": {"_target_": "diff", "rope": "mixed"}},
         r"^model\.net\.attention\.rope: rope=mixed does not combine with differential attention"),
        ({"attention": {"_target_": "diffsim", "boundary": "wrap"}}, r"^model\.net\.attention\.boundary: must be one of"),
        ({"attention": {"_target_": "nope"}}, r"^model\.net\.attention\._target_: unknown attention 'nope'"),
        ({"attention": {"_target_": "mhsa", "rope_thta": 3}},
         r"^model\.net\.attention\.rope_thta: ViTAttention has no such option; did you mean rope_theta\?"),
        ({"attention": {"_target_": "diff", "lambda_mode": "half"}}, r"^model\.net\.attention\.lambda_mode: must be one of"),
        ({"position": {"_target_": "none", "table_drop": 0.1}}, r"^model\.net\.position\.table_drop: needs the learned table"),
        ({"position": {"_target_": "sincos", "cpe": True, "cpe_after": 12}},
         r"^model\.net\.position\.cpe_after: 12 must index a block"),
        ({"position": {"_target_": "learned", "cpe_aftr": 1}},
         r"^model\.net\.position\.cpe_aftr: LearnedPosition has no such option; did you mean cpe_after\?"),
        ({"position": {"_target_": "lerned"}}, r"^model\.net\.position\._target_: unknown position encoding 'lerned'; did you mean learned\?"),
        ({"position": {"_target_": "sincos"}, "embed_dim": 30, "num_heads": 3},
         r"^model\.net\.position\._target_: embed_dim 30 must be divisible by 4"),
        ({"rope_thta": 3}, "model.net.rope_thta"),
    ],
)
def test_bad_settings_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("vit", **kwargs)


# ----------------------------------------------------------------------------- configs and training


@pytest.fixture(scope="module")
def composed():
    """Every variant with cifar10, cifar100 and imagenet100, composed in one Hydra context."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {
            (name, data): compose(config_name="train", overrides=[f"model={name}", f"data={data}"])
            for name in VARIANTS
            for data in ("cifar10", "cifar100", "imagenet100")
        }


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_composes_and_builds_with_each_dataset(name, composed):
    for data, classes, img, patch in (("cifar10", 10, 32, 4), ("cifar100", 100, 32, 4), ("imagenet100", 100, 256, 16)):
        cfg = composed[(name, data)]
        assert cfg.model._target_ == "vitlab.families.ImageClassifier" and cfg.model.net.name == name
        assert cfg.recipe.optimizer.lr == 1e-4 and cfg.recipe.batch_size == 256
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        model = create_model(net.pop("name"), **net)
        assert model.num_classes == classes and model.patch_size == patch and model.grid == (img // patch,) * 2
        if data == "imagenet100":
            assert _params(model) == BASELINE_PARAMS + EXTRA_PARAMS[name]


def test_clear_vit_recipe_is_the_seeds_with_fixes():
    recipe = to_recipe(compose_config(["model=vit", "data=imagenet100"]).recipe)
    assert recipe.epochs == 90 and recipe.batch_size == 256 and recipe.grad_clip == 1.0
    assert recipe.optimizer.lr == 1e-4 and recipe.optimizer.weight_decay == 0.05 and recipe.optimizer.exclude_from_decay
    assert recipe.schedule.warmup_ratio * 45_703 == pytest.approx(5000, abs=1) and recipe.schedule.min_lr == 0
    assert recipe.label_smoothing == 0.1
    mixing = recipe.mixing
    assert (mixing.mixup_alpha, mixing.cutmix_alpha, mixing.prob, mixing.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert list(recipe.augment.random_resized_crop) == [0.08, 1.0] and recipe.augment.random_erasing == 0.25
    assert recipe.augment.randaug_legacy is True


def test_imagenet100_pipeline_is_the_seeds():
    from vitlab.instantiate import build

    datamodule = build(compose_config(["experiment=imagenet100_vit"]).data, batch_size=32)
    names = [type(t).__name__ for t in datamodule._train_transform(None).transforms]
    assert names[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "LegacyRandAugment"] and "RandomErasing" in names
    assert datamodule.img_size == 256 and datamodule.num_classes == 100


@pytest.mark.parametrize("name", TABLE)
def test_experiment_files_reproduce_the_table_rows(name):
    cfg = compose_config([f"experiment=imagenet100_{name}"])
    assert cfg.model.net.name == name and cfg.data.num_classes == 100 and cfg.data.img_size == 256
    assert cfg.task_name == f"imagenet100_{name}" and cfg.recipe.optimizer.lr == 1e-4


def test_ablation_sweep_runs_the_seven_rows_as_one_multirun():
    cfg = compose_config(["sweep=clear_vit_ablation"], hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params.model.split(",") == TABLE
    assert cfg.data.num_classes == 100 and cfg.recipe.epochs == 90


SMOKE_TINY = [
    "model.net.depth=2",
    "model.net.embed_dim=64",
    "model.net.num_heads=2",
    "recipe.batch_size=8",
    "data.train_size=24",  # 16 to train on after the 8 held out for validation
    "data.val_size=8",
    "data.test_size=8",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
]


@pytest.mark.parametrize("name", VARIANTS)
def test_trains_a_few_steps_on_synthetic_data(name, smoke_cfg, tmp_path):
    # Testing the best checkpoint (weights-only load) once is enough; the other runs skip it.
    entropy = name == "vit_diff_entropy"
    metrics = train(smoke_cfg(f"model={name}", *SMOKE_TINY, f"test={str(entropy).lower()}"))
    assert metrics["global_step"] == 2 and metrics["model"] == name
    if entropy:  # tested, and the epoch means of the entropy factor and lambda are logged
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        assert 0.0 <= metrics["test/top1"] <= 1.0
        tags = set()
        for events in tmp_path.glob("run/tensorboard/**/events.out.tfevents.*"):
            tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
        assert "train/entropy_mean" in tags and "train/lambda_mean" in tags
