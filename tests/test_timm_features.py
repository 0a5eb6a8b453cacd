"""timm's feature API and graph capture on every vitlab network, after timm's own tests/test_models.py:
forward_intermediates (shapes, indices, norm, output formats, stop_early, the final features),
prune_intermediate_layers, feature_info, torch.fx tracing as timm's feature extractor traces (forward
and backward, traced == eager) and torch.compile without graph breaks.

Every network runs at its registered (native) image size with its depth cut (the checks are per
block, so two blocks show them); the default run takes one network per family, the rest are slow."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import FeatureInfo
from timm.models._features import FeatureGetterNet
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from vitlab.layers.rope import apply_rotary
from vitlab.models import create_model, get_model_config, list_models

FAMILIES = ("ViTConfig", "OutGridViTConfig", "QAViTConfig")  # vitlab's own; the rest are timm's models
VIT_VARIANTS = ("vit", "vit_alibi", "vit_cpe", "vit_diff_entropy", "vit_diffsim", "vit_pe_dropout", "vit_rope",
                "vit_rope_axial", "vit_rope_mixed", "vit_suppress")
#: Each network's overrides: its depth cut, nothing else (the image size is the registered one).
CUTS = {
    **{name: dict(depth=2) for name in (*VIT_VARIANTS, "mini_vit", "mini_vit_d192", "mini_vit_d192_l12")},
    **{name: dict(depths=(1, 1, 1, 1)) for name in
       ("outgrid", "outgrid_7m", "outgrid_14m", "outgrid_svhn", "outgrid_tin22m", "outgrid_tinc", "outgrid_33m")},
    "outgrid_b": dict(depths=(1, 1, 1, 1), front_depth=2),
    **{name: dict(depth=2) for name in ("qavit_tiny", "qavit_small", "qavit_tiny_32", "qavit_small_32")},
}
#: One network per family in the default run: the clear-vit backbone (RoPE: the variant that broke
#: torch.compile's graph), Mini-ViT (two CLS tokens, dropout), OutGrid Model B (front blocks in the
#: stem's tap) and QAViT at 32 px.
DEFAULT = ("vit_rope", "mini_vit", "outgrid_b", "qavit_tiny_32")


def _params(names):
    return [pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow) for name in names]


NETWORKS = _params(sorted(CUTS))
# torchvision notes that the eval graph is part of the train graph (dropout nodes): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing:UserWarning")
TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                     param_shapes_constant=True)


def test_every_vitlab_network_is_covered():
    native = {name for name in list_models() if type(get_model_config(name)).__name__ in FAMILIES}
    assert native == set(CUTS)


def _build(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **CUTS[name], **overrides)


def _images(net: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    size = net.img_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _as_map(net, tokens_or_map: torch.Tensor) -> torch.Tensor:
    """The final norm on an NCHW tap, as the network applies it (LayerNorm per token, BatchNorm per map)."""
    if net.norm_fits_every_tap:
        return net.norm(tokens_or_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return net.norm(tokens_or_map)


# ----------------------------------------------------------------------------- forward_intermediates
@pytest.mark.parametrize("name", NETWORKS)
@torch.no_grad()
def test_forward_intermediates_are_feature_info_s_maps_and_end_in_forward_features(name):
    net = _build(name).eval()
    x = _images(net)
    final, taps = net.forward_intermediates(x)
    info = FeatureInfo(net.feature_info, list(range(len(net.feature_info))))
    assert len(taps) == len(net.feature_info) >= 2
    for tap, chs, red in zip(taps, info.channels(), info.reduction()):
        assert tap.shape == (2, chs, x.shape[-2] // red, x.shape[-1] // red)
        assert torch.isfinite(tap).all()
    torch.testing.assert_close(final, net.forward_features(x), rtol=0, atol=0)
    modules = dict(net.named_modules())
    assert all(entry["module"] in modules for entry in net.feature_info)
    net.set_grad_checkpointing()  # timm's check: the same features with checkpointing on
    final_ckpt, taps_ckpt = net.forward_intermediates(x)
    torch.testing.assert_close(final_ckpt, final)
    torch.testing.assert_close(taps_ckpt, taps)


@pytest.mark.parametrize("name", NETWORKS)
@torch.no_grad()
def test_forward_intermediates_indices_norm_formats_and_stop_early(name):
    net = _build(name).eval()
    generator = torch.Generator().manual_seed(4)
    for t in (*net.norm.parameters(), *net.norm.buffers()):  # not the identity it starts as (OutGrid's BatchNorm)
        if t.is_floating_point():
            t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
    x = _images(net)
    everything = net.forward_intermediates(x, intermediates_only=True)
    n = len(everything)
    last_two = net.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two, everything[-2:], rtol=0, atol=0)
    picked = net.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    torch.testing.assert_close(picked, [everything[0], everything[n - 1]], rtol=0, atol=0)
    with pytest.raises(AssertionError, match="out of range"):
        net.forward_intermediates(x, indices=[n])
    # NLC: the same features, one row per pixel or patch token in raster order
    tokens = net.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
    for t, m in zip(tokens, picked):
        torch.testing.assert_close(t, m.flatten(2).transpose(1, 2), rtol=0, atol=0)
    # norm: the final norm on every tap it fits (OutGrid: the last stage's only)
    normed = net.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[1], _as_map(net, picked[1]))
    expected_first = _as_map(net, picked[0]) if net.norm_fits_every_tap else picked[0]
    torch.testing.assert_close(normed[0], expected_first)
    assert not torch.allclose(normed[1], picked[1])
    # stop_early: the same first tap, and the final features are not forward_features'
    final, early = net.forward_intermediates(x, indices=[0], stop_early=True)
    torch.testing.assert_close(early, everything[:1], rtol=0, atol=0)
    full = net.forward_features(x)
    assert final.shape != full.shape or not torch.allclose(final, full)
    with pytest.raises(ValueError, match="output_fmt must be one of NCHW, NLC"):
        net.forward_intermediates(x, output_fmt="NHWC")


@torch.no_grad()
def test_vit_returns_prefix_tokens_as_timm_does():
    net = _build("mini_vit").eval()  # two CLS tokens
    x = _images(net)
    pairs = net.forward_intermediates(x, indices=[-1], return_prefix_tokens=True, norm=True, intermediates_only=True)
    (patches, prefix), = pairs
    tokens = net.forward_features(x)
    torch.testing.assert_close(prefix, tokens[:, :2])
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), tokens[:, 2:])


# ----------------------------------------------------------------------------- prune_intermediate_layers
@pytest.mark.parametrize("name", NETWORKS)
@torch.no_grad()
def test_pruned_network_gives_the_same_chosen_maps(name):
    net = _build(name).eval()
    x = _images(net)
    everything = net.forward_intermediates(x, intermediates_only=True)
    pruned = copy.deepcopy(net)
    take = pruned.prune_intermediate_layers([0, 1])
    assert take == [0, 1] and len(pruned.feature_info) == 2
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True), everything[:2],
                               rtol=0, atol=0)
    assert pruned.num_classes == 0 and pruned(x).shape[0] == 2  # the head is gone: features out
    # timm's own wrapper (features_only='getter') prunes and reads the same maps
    getter = FeatureGetterNet(copy.deepcopy(net), out_indices=(-2, -1))
    torch.testing.assert_close(getter(x), everything[-2:], rtol=0, atol=0)
    assert getter.feature_info.channels() == [entry["num_chs"] for entry in net.feature_info[-2:]]


# ----------------------------------------------------------------------------- torch.fx
def _fx(net: torch.nn.Module, train: bool) -> torch.nn.Module:
    """timm's tests' traced model: the last node of the train and the eval graph as the outputs."""
    train_nodes, eval_nodes = get_graph_node_names(net, tracer_kwargs=TRACER_KWARGS)
    return create_feature_extractor(net, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=TRACER_KWARGS).train(train)


def _without_randomness(net: torch.nn.Module) -> torch.nn.Module:
    """Every dropout, attention dropout, drop-path and table dropout at rate 0 (in place)."""
    for module in net.modules():
        for rate in ("p", "attn_drop", "drop_prob", "table_drop"):
            if isinstance(getattr(module, rate, None), float):
                setattr(module, rate, 0.0)
    return net


@pytest.mark.parametrize("name", NETWORKS)
def test_fx_forward_equals_eager(name):
    net = _build(name).eval()
    x = _images(net, batch=1)
    with torch.inference_mode():
        eager = net(x)
        traced = _fx(net, train=False)
        (out,) = traced(x).values()
    # Equal up to float32 rounding: where a layer has a CPU kernel of its own (OutGrid's tap mix), the
    # graph holds the same sum in plain ops, added in another order.
    torch.testing.assert_close(out, eager)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NETWORKS)
def test_fx_backward_equals_eager(name):
    net = _build(name, num_classes=42).train()
    x = _images(net)
    traced = _fx(net, train=True)
    (out,) = traced(x).values()  # with the network's dropout and drop-path drawn
    out.mean().backward()
    assert out.shape == (2, 42)
    missing = [n for n, p in traced.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # Without randomness the traced train graph computes eager's numbers, gradients included.
    net = _without_randomness(_build(name, num_classes=42)).train()
    eager_net, traced = copy.deepcopy(net), _fx(net, train=True)
    (out,) = traced(x).values()
    eager = eager_net(x)
    torch.testing.assert_close(out, eager)
    out.square().mean().backward()
    eager.square().mean().backward()
    grads = {n: p.grad for n, p in traced.named_parameters() if p.grad is not None}
    for n, p in eager_net.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", NETWORKS)
@torch.no_grad()
def test_plain_symbolic_trace_keeps_the_leaves_whole_and_equals_eager(name):
    """torch.fx.symbolic_trace without timm's tracer settings: the leaves are named with torch.fx.wrap."""
    net = _build(name, num_classes=10).eval()
    x = _images(net)
    traced = torch.fx.symbolic_trace(net)
    torch.testing.assert_close(traced(x), net(x))  # OutGrid: its CPU kernel sums in another order


def test_a_traced_vit_still_checks_its_input():
    net = _build("vit_rope").eval()
    traced = _fx(net, train=False)
    with pytest.raises(ValueError, match="input 250x250 is not divisible by patch_size 16"):
        traced(torch.randn(1, 3, 250, 250))


# ----------------------------------------------------------------------------- torch.compile
def _graph_breaks(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(x)
    return explained.graph_break_count, [str(reason.reason).splitlines()[0] for reason in explained.break_reasons]


@pytest.mark.parametrize("name", _params(sorted(set(CUTS) - set(VIT_VARIANTS)) + [*VIT_VARIANTS]))
def test_the_train_step_compiles_into_one_graph(name):
    net = _build(name).train()
    count, reasons = _graph_breaks(net, _images(net))
    assert count == 0, reasons


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name == "vit_rope" else pytest.mark.slow)
                                  for name in (*DEFAULT, *(v for v in VIT_VARIANTS if v != "vit_rope"))])
def test_fullgraph_compile_runs_forward_and_backward_as_eager(name):
    net = _without_randomness(_build(name, num_classes=10)).train()
    x = _images(net)
    eager_net = copy.deepcopy(net)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().mean().backward()
    eager = eager_net(x)
    eager.square().mean().backward()
    torch.testing.assert_close(out, eager)
    for (n, p), q in zip(net.named_parameters(), eager_net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


OPTIONS = {  # attention options no registered network uses
    "suppress_grid": dict(_target_="suppress", mode="grid"),
    "diff_learned": dict(_target_="diff", lambda_mode="learned"),
    "diff_tokens": dict(_target_="diff", lambda_mode="scale", entropy_source="tokens"),
    "diff_attention": dict(_target_="diff", lambda_mode="replace", entropy_source="attention"),
    "diffsim_rows": dict(_target_="diffsim", boundary="rows"),
    "alibi_manhattan": dict(_target_="alibi", distance="manhattan"),
}


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_attention_options_trace_and_compile_too(option):
    net = create_model("vit", img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3,
                       attention=OPTIONS[option]).eval()
    x = _images(net)
    with torch.inference_mode():
        torch.testing.assert_close(next(iter(_fx(net, train=False)(x).values())), net(x))
    count, reasons = _graph_breaks(net.train(), x)
    assert count == 0, reasons


# ----------------------------------------------------------------------------- RoPE in real arithmetic
def test_rotary_in_real_arithmetic_is_the_complex_product():
    t = torch.randn(2, 3, 17, 16, generator=torch.Generator().manual_seed(2))
    angles = torch.randn(3, 17, 8, generator=torch.Generator().manual_seed(3))
    rotation = torch.polar(torch.ones_like(angles), angles)
    complex_product = torch.view_as_real(torch.view_as_complex(t.unflatten(-1, (-1, 2)).contiguous()) * rotation)
    torch.testing.assert_close(apply_rotary(t, angles), complex_product.flatten(-2))
    angles[:, :1] = 0.0  # angle 0: the pair exactly as it is (CLS tokens)
    assert torch.equal(apply_rotary(t, angles)[:, :, :1], t[:, :, :1])


def test_the_docs_example_runs_as_written(capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    code = text.split("## timm's contract", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/models.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["[(2, 96, 8, 8), (2, 96, 8, 8)]", "[2, 8] 9"]
