"""Issue 9: the faster computations equal the ones they replaced, the speed switches do what they say,
and ``python -m vitlab.bench`` measures and writes its table."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vitlab.callbacks import SDPABackend
from vitlab import bench
from vitlab.config import OptimizerConfig, to_hardware
from vitlab.errors import ConfigError
from vitlab.layers.attention import Attention, attend, sdpa_backend
from vitlab.layers.dropout import Dropout, dropout
from vitlab.layers.dynamic_kernel import DynamicKernelMixer
from vitlab.models import create_model
from vitlab.optim import build_optimizer

from conftest import ROOT


def _unfold_mixer(mixer: DynamicKernelMixer, x: torch.Tensor) -> torch.Tensor:
    """The mixer as it was before issue 9: an unfolded k*k copy of the values and an einsum."""
    B, C, H, W = x.shape
    h, k = mixer.num_heads, mixer.kernel_size
    weights = mixer.kernel_logits(x).view(B, h, k * k, H, W).softmax(dim=2)
    values = F.unfold(mixer.value(x), k, padding=k // 2).view(B, h, C // h, k * k, H, W)
    return mixer.proj(torch.einsum("bhkyx,bhckyx->bhcyx", weights, values).reshape(B, C, H, W))


@pytest.mark.parametrize("kernel_size, layout", [(3, torch.contiguous_format), (5, torch.channels_last)])
def test_dynamic_kernel_mixer_equals_the_unfold_version_with_its_gradients(kernel_size, layout, one_thread):
    torch.manual_seed(0)
    mixer = DynamicKernelMixer(dim=8, num_heads=2, kernel_size=kernel_size)
    x = torch.randn(2, 8, 6, 5).contiguous(memory_format=layout).requires_grad_()
    new, _ = mixer(x)
    new_grads = torch.autograd.grad(new.square().sum(), [x, *mixer.parameters()])
    old = _unfold_mixer(mixer, x)
    old_grads = torch.autograd.grad(old.square().sum(), [x, *mixer.parameters()])
    torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tap_mix_backward_passes_gradcheck_in_both_layouts():
    from vitlab.layers.dynamic_kernel import _TapMix

    torch.manual_seed(0)
    weights = torch.rand(1, 2, 9, 4, 3, dtype=torch.float64).requires_grad_()
    plain = torch.randn(1, 6, 4, 3, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        values = plain.contiguous(memory_format=layout).view(1, 2, 3, 4, 3).requires_grad_()
        assert torch.autograd.gradcheck(_TapMix.apply, (weights, values, 3))
    # A kernel wider than the map: the border taps see nothing but zeros.
    weights = torch.rand(1, 2, 25, 2, 3, dtype=torch.float64).requires_grad_()
    values = torch.randn(1, 2, 3, 2, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_TapMix.apply, (weights, values, 5))


def _padded_tap_mix(weights: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """The tap sum as it was before issue 18: on an explicitly zero-padded copy of the values."""
    H, W = values.shape[-2:]
    padded = F.pad(values, (k // 2,) * 4)
    return sum(weights[:, :, t : t + 1] * padded[..., t // k : t // k + H, t % k : t % k + W] for t in range(k * k))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_tap_mix_without_padding_equals_the_padded_sum_with_its_gradients(kernel_size, one_thread):
    from vitlab.layers.dynamic_kernel import tap_mix

    torch.manual_seed(0)
    k2 = kernel_size**2
    weights = torch.randn(2, 3, k2, 8, 8).contiguous(memory_format=torch.channels_last_3d).softmax(2).requires_grad_()
    values = torch.randn(2, 12, 8, 8).contiguous(memory_format=torch.channels_last).view(2, 3, 4, 8, 8).requires_grad_()
    grad = torch.randn(2, 3, 4, 8, 8)
    new, old = tap_mix(weights, values, kernel_size), _padded_tap_mix(weights, values, kernel_size)
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(new, (weights, values), grad), torch.autograd.grad(old, (weights, values), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tap_mix_under_compile_takes_the_plain_ops_and_gives_the_same_sum(monkeypatch, one_thread):
    from vitlab.layers.dynamic_kernel import tap_mix

    torch.manual_seed(0)
    weights, values = torch.randn(1, 2, 9, 5, 4).softmax(2), torch.randn(1, 2, 3, 5, 4)
    eager = tap_mix(weights, values, 3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(tap_mix(weights, values, 3), eager, atol=1e-6, rtol=1e-5)
    values.requires_grad_()
    assert tap_mix(weights, values, 3).grad_fn.name() != "_TapMixBackward"  # plain ops, traceable


def test_outgrid_runs_channels_last_inside_and_gives_the_same_logits_for_either_input_layout(one_thread):
    torch.manual_seed(0)
    net = create_model("outgrid_7m", dims=(8, 16, 16, 16), num_heads=(2, 2, 2, 2), outlook_heads=(2, 2, 2, 2),
                       depths=(1, 1, 1, 1), stem_dim=8, num_classes=5).eval()
    seen = []
    net.stages[0].blocks[0].grid.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, cl = net(x), net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(plain, cl, atol=1e-5, rtol=1e-5)
    assert seen == [True, True]  # the NCHW -> BHWC permute in front of grid attention is a free view


def test_cpu_dropout_drops_at_the_rate_and_keeps_the_expectation(one_thread):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    out = dropout(x, 0.1)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    scale = 32768 / (32768 - round(0.1 * 32768))
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], scale))
    assert abs(out.mean().item() - 1.0) < 0.005
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    # A rate that does not round to a multiple of 1/32768 falls back to F.dropout (still a dropout).
    assert torch.isclose(dropout(x, 1e-6), torch.tensor(1 / (1 - 1e-6))).float().mean() > 0.99


def test_cpu_dropout_gradient_is_the_same_mask_and_scale(one_thread):
    x = torch.randn(64, 33, requires_grad=True)
    out = Dropout(0.5)(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    expected = torch.where(out != 0, torch.full_like(x, 2.0), torch.zeros_like(x))
    torch.testing.assert_close(grad, expected)
    assert Dropout(0.5).eval()(x) is x


def test_attention_with_dropout_on_cpu_takes_the_explicit_path_and_matches_sdpa_without_it(one_thread):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    out, probs = attend(q, k, v, dropout_p=0.3)
    assert probs is None and out.shape == (2, 4, 10, 8)
    # The explicit path dropped whole probabilities: the output is a sub-sum of the scaled weights.
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(out, sdpa)
    torch.testing.assert_close(attend(q, k, v, dropout_p=0.0)[0], sdpa)
    attn = Attention(16, 4, attn_drop=0.5).eval()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(attn(x)[0], attn(x, need_weights=True)[0], atol=1e-6, rtol=1e-5)


def test_bench_counts_mini_vit_train_step_as_about_three_forwards(one_thread):
    flops = bench.count(bench.build_subject("mini_vit:depth=2,embed_dim=24,num_heads=2"))
    assert 2.9 < flops.train_step / flops.forward < 3.05
    assert flops.forward > 2 * 65 * 24 * 72 * 2  # at least the two blocks' QKV projections


# ----------------------------------------------------------------------------------------- switches
def test_sdpa_backend_context_and_callback_restrict_and_restore(one_thread):
    assert torch.backends.cuda.flash_sdp_enabled()
    with sdpa_backend("math"):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
    callback = SDPABackend("math")
    callback.setup(None, None, "fit")
    assert not torch.backends.cuda.flash_sdp_enabled()
    q = torch.randn(1, 2, 5, 4)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q), attend(q, q, q, need_weights=True)[0])
    callback.teardown(None, None, "fit")
    assert torch.backends.cuda.flash_sdp_enabled()
    with pytest.raises(ValueError, match="unknown SDPA backend"):
        sdpa_backend("fastest")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"accelerator": "cpu", "sdpa_backend": "efficient"}, "hardware.sdpa_backend: efficient is a CUDA kernel"),
        ({"accelerator": "cpu", "sdpa_backend": "turbo"}, "hardware.sdpa_backend: unknown backend 'turbo'"),
    ],
)
def test_bad_sdpa_backend_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_hardware(overrides)


def test_sdpa_backend_math_trains_through_the_cli_config(smoke_cfg, tmp_path, one_thread):
    from vitlab.training import train

    cfg = smoke_cfg("model=mini_vit", "model.net.depth=1", "hardware.sdpa_backend=math", "test=false",
                    "trainer.max_steps=2", "logger=csv")
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the fit


def test_fused_adamw_is_automatic_on_cpu_and_cuda_and_steps_as_the_foreach_default():
    net = create_model("mini_vit", depth=1)
    assert build_optimizer(net, OptimizerConfig()).defaults["fused"] is True
    assert build_optimizer(net, OptimizerConfig(fused=False)).defaults["fused"] is False
    if torch.cuda.is_available():
        assert build_optimizer(net.cuda(), OptimizerConfig()).defaults["fused"] is True
    # The same updates as torch's foreach step over a few steps, weight decay groups included.
    torch.manual_seed(0)
    nets = [create_model("mini_vit", depth=1, num_classes=3).eval() for _ in range(2)]  # eval: no dropout masks
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [build_optimizer(n, OptimizerConfig(fused=f, weight_decay=0.05)) for n, f in zip(nets, (None, False))]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    start = [p.detach().clone() for p in nets[0].parameters()]
    for _ in range(3):
        for n, o in zip(nets, optimizers):
            F.cross_entropy(n(x), y).backward()
            o.step()
            o.zero_grad()
    assert all(not torch.equal(a, b) for a, b in zip(nets[0].parameters(), start))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------- compile
# One small network per family. The default run compiles the clear-vit ViT with the aot_eager backend
# (dynamo graph capture + AOT autograd, about 10 s); the slow run compiles every family with aot_eager
# and with inductor (generated C++ kernels; OutGrid alone takes minutes on 2 cores).
FAMILIES = {
    "mini_vit": dict(depth=2, embed_dim=24, num_heads=2, drop_rate=0.0, attn_drop_rate=0.0),
    "outgrid_7m": dict(dims=(8, 16, 16, 16), num_heads=(2, 2, 2, 2), outlook_heads=(2, 2, 2, 2),
                       depths=(1, 1, 1, 1), stem_dim=8, drop_path_rate=0.0),
    "vit": dict(img_size=32, embed_dim=24, depth=2, num_heads=2),
    "resnet18": dict(),
    "qavit_tiny_32": dict(embed_dim=32, depth=2, num_heads=2, num_groups=4, bank_size=4,
                          drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0),
}


def _compiled_matches_eager(name: str, backend: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, **FAMILIES[name])
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    compiled = torch.compile(net, backend=backend)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), atol=1e-4, rtol=1e-4)
    net.train()
    grads_eager = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    grads_compiled = torch.autograd.grad(F.cross_entropy(compiled(x), y), list(net.parameters()))
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_compiled_and_eager_match_vit_aot_eager(one_thread):
    torch._dynamo.reset()
    _compiled_matches_eager("vit", "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_compiled_and_eager_match_every_family(name, backend):
    torch._dynamo.reset()
    _compiled_matches_eager(name, backend)


# ----------------------------------------------------------------------------------------- bench
def test_parse_spec_reads_yaml_values_and_lists():
    assert bench.parse_spec("outgrid_7m:grid_sizes=[4,4,2,1],drop_rate=0.1") == (
        "outgrid_7m", {"grid_sizes": [4, 4, 2, 1], "drop_rate": 0.1})
    assert bench.parse_spec("timm:resnet18:drop_rate=0.2") == ("timm:resnet18", {"drop_rate": 0.2})
    with pytest.raises(ConfigError, match="key=value"):
        bench.parse_spec("mini_vit:depth")


def test_dataset_input_comes_from_the_registry_entry():
    assert bench.build_subject("mini_vit:depth=1").img_size == 32
    assert bench.build_subject("outgrid_tinc:depths=[1,1,1,1]").img_size == 64
    subject = bench.build_subject("vit:depth=1")
    assert (subject.img_size, subject.num_classes) == (256, 100)


def test_bench_writes_csv_and_markdown_with_the_timm_reference(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    bench.main(["mini_vit:depth=1,embed_dim=24,num_heads=2", "--against", "timm", "--batch-size", "4",
                "--warmup", "0", "--iters", "1", "--threads", "1", "--out", str(out)])
    rows = list(csv.DictReader((tmp_path / "run.csv").open()))
    assert [r["model"] for r in rows] == ["mini_vit:depth=1,embed_dim=24,num_heads=2", "timm:VisionTransformer d24 L1 h2 p4"]
    assert rows[1]["reference_of"] == rows[0]["model"]
    for row in rows:
        assert float(row["train_img_s"]) > 0 and float(row["infer_img_s"]) > 0
        assert 0 < float(row["mfu"]) < 1 and float(row["peak_mem_mb"]) > 0
    # Same shape; timm's MLP keeps the biases Mini-ViT leaves out (2 * 72 + 2 * 24 + ... at this size).
    assert 0 < int(rows[1]["params"]) - int(rows[0]["params"]) < 0.25 * int(rows[0]["params"])
    text = (tmp_path / "run.md").read_text()
    assert "| model | px | classes | params |" in text and "x train" in text and "MFU %" in text
    assert "peak fp32 matmul" in text and "load average" in text and "MACs w/o SDPA" in text
    assert "run.csv" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:  # never overwrites
        bench.main(["mini_vit", "--out", str(out)])
    assert err.value.code == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mini_vit", "--precision", "fp16", "--device", "cpu"], "--precision fp16: fp16 autocast needs a CUDA GPU"),
        (["mini_vit", "--sdpa-backend", "efficient", "--device", "cpu"], "--sdpa-backend efficient: a CUDA-only kernel"),
        (["no_such_net", "--device", "cpu"], "model.net.name: unknown network 'no_such_net'"),
    ],
)
def test_bench_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        bench.main([*argv, "--out", str(tmp_path / "x")])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_bench_flops_mode_times_nothing_and_matches_the_shared_count(tmp_path, one_thread):
    out = tmp_path / "flops"
    bench.main(["mini_vit:depth=1,embed_dim=24,num_heads=2", "--mode", "flops", "--out", str(out)])
    (row,) = list(csv.DictReader((tmp_path / "flops.csv").open()))
    expected = bench.count(bench.build_subject("mini_vit:depth=1,embed_dim=24,num_heads=2"))
    assert int(row["macs_per_img"]) == expected.macs and int(row["macs_per_img_without_sdpa"]) == expected.macs_without_sdpa
    assert row["train_img_s"] == "" and row["mfu"] == ""
    assert "| train FLOPs/img |" in (tmp_path / "flops.md").read_text()


def test_bench_relative_to_times_variants_together_against_the_baseline(tmp_path, one_thread):
    base, variant = "vit:img_size=32,embed_dim=24,depth=1,num_heads=2", "vit_rope:img_size=32,embed_dim=24,depth=1,num_heads=2"
    table, _ = bench.run(bench.parse_args([base, variant, "--relative-to", base, "--mode", "train", "--batch-size", "2",
                                           "--warmup", "0", "--iters", "1", "--out", str(tmp_path / "rel")]))
    assert table[0][f"train vs {base}"] == "1.00x" and table[0]["params vs base"] == "+0"
    assert table[1][f"train vs {base}"].endswith("x") and int(table[1]["params vs base"].replace(",", "")) < 0
    with pytest.raises(ConfigError, match="--relative-to vit: not among the models"):
        bench.run(bench.parse_args([variant, "--relative-to", "vit", "--out", str(tmp_path / "x")]))


# ----------------------------------------------------------------------------------------- allocator
_PAGE_FAULTS = """
import resource, torch
from vitlab.utils import reuse_freed_memory
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def reallocated():  # faults of five allocations of a 48 MiB block (float32), each written and freed
    torch.ones(48 << 18)
    before = faults()
    for _ in range(5):
        torch.ones(48 << 18)
    return faults() - before
system = reallocated()
assert reuse_freed_memory()
print(system, reallocated())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_reuse_freed_memory_stops_the_page_faults_of_reallocated_activations(tmp_path):
    """glibc maps a 48 MiB block afresh for every allocation (one page fault per 4 KiB written);
    with the setting the freed block is reused. In a process of its own: the setting is process-wide."""
    script = tmp_path / "faults.py"
    script.write_text(_PAGE_FAULTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    system, reuse = map(int, done.stdout.split())
    pages = (48 << 20) // 4096
    assert system >= 4 * pages  # every allocation faulted its pages in again
    assert reuse <= 2 * pages < system / 2


def test_training_and_bench_set_the_allocator_unless_told_not_to(monkeypatch, capsys):
    from vitlab.config import to_hardware

    assert to_hardware({}).reuse_freed_memory is True
    assert to_hardware({"reuse_freed_memory": False}).reuse_freed_memory is False
    calls = []
    monkeypatch.setattr(bench, "reuse_freed_memory", lambda: calls.append("set") or True)
    monkeypatch.setattr(bench, "run", lambda args: ([], "table\n"))
    bench.main(["mini_vit"])
    bench.main(["mini_vit", "--system-malloc"])
    assert calls == ["set"] and capsys.readouterr().out == "table\ntable\n"
