"""vitlab.measure: the one FLOP count (attention and the dynamic kernel included), precision, timing,
MFU, and that metrics.json (the FLOPs callback) and vitlab.bench report the same MACs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitlab.callbacks import FlopsCallback
from vitlab import bench, measure
from vitlab.layers.dynamic_kernel import DynamicKernelMixer
from vitlab.models import list_models

pytestmark = pytest.mark.usefixtures("one_thread")

B, H, N, D = 2, 3, 10, 8  # a hand-countable attention block


class SelfAttentionCore(nn.Module):
    """q = k = v = a linear map of the input, then SDPA: (B, H, N, D) -> (B, H * N * D)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)
        return F.scaled_dot_product_attention(q, q, q).flatten(1)


@pytest.mark.parametrize("backend", [None, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
def test_sdpa_flops_on_cpu_equal_the_formula_forward_and_backward(backend):
    block = SelfAttentionCore()
    x = torch.randn(B, H, N, D)
    context = sdpa_kernel(backend) if backend is not None else torch.enable_grad()
    with context:
        count = measure.count_flops(block, x, backward=True)
    attention = 4 * B * H * N * N * D  # QK^T and PV, 2 FLOPs per multiply-add
    linear = 2 * B * H * N * D * D
    assert count.sdpa_forward == attention
    assert count.forward == attention + linear
    # Backward: dV, dP, dQ, dK (twice the attention forward) plus the projection's weight gradient
    # (the input needs none); the same on the fused CPU kernel and on the math path.
    assert count.backward == 2 * attention + linear
    if backend != SDPBackend.MATH:
        assert count.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] == attention
        assert count.by_op["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == 2 * attention


def test_importing_measure_makes_torchs_own_counter_count_cpu_sdpa():
    x = torch.randn(B, H, N, D)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        F.scaled_dot_product_attention(x, x, x)
    assert counter.get_total_flops() == 4 * B * H * N * N * D


def test_conv_and_linear_hand_count_per_batch_and_image():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    conv_macs = 4 * 3 * 3 * 3 * 8 * 8  # out channels x in channels x kernel taps x output pixels
    linear_macs = 4 * 8 * 8 * 10
    assert measure.count_flops(model, torch.zeros(5, 3, 8, 8)).forward == 5 * 2 * (conv_macs + linear_macs)
    flops = measure.image_flops(model, 8)
    assert flops.forward == 2 * (conv_macs + linear_macs) and flops.macs == conv_macs + linear_macs
    assert flops.forward_without_sdpa == flops.forward  # no attention here
    # Backward: the weight gradients of both layers and the linear layer's input gradient; the
    # convolution's input (the image) needs none.
    assert flops.train_step == flops.forward + 2 * (conv_macs + 2 * linear_macs)


def test_grouped_convolution_backward_counts_twice_its_forward():
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        conv(x)
    with FlopCounterMode(display=False, custom_mapping=measure.FLOP_FIXES) as step:
        conv(x).sum().backward()
    assert step.get_total_flops() == 3 * forward.get_total_flops()


def test_dynamic_kernel_is_counted_by_its_formula():
    dim, heads, k, side = 8, 2, 3, 5
    mixer = DynamicKernelMixer(dim, heads, kernel_size=k)
    head = nn.Sequential(nn.Flatten(), nn.Linear(dim * side * side, 4))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer, self.head = mixer, head

        def forward(self, x):
            return self.head(self.mixer(x)[0])

    count = measure.count_flops(Net(), torch.randn(2, dim, side, side), backward=True)
    taps = 2 * k * k * 2 * dim * side * side  # one multiply-add per tap, channel and pixel, batch 2
    assert count.by_op["DynamicKernelMixer (formula)"] == taps + 2 * taps  # forward, then both gradients
    convs = 2 * 2 * side * side * (dim * heads * k * k + 2 * dim * dim)  # kernel logits, value, proj
    assert count.forward == taps + convs + 2 * 2 * dim * side * side * 4


def test_image_flops_leave_the_model_as_it_was():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(3))
    net(torch.randn(2, 3, 8, 8))
    net.train()
    net[1].eval()  # a frozen norm stays frozen
    stats = net[1].running_mean.clone()
    rng = torch.get_rng_state()
    measure.image_flops(net, 8)
    assert net.training and net[0].training and not net[1].training
    assert torch.equal(net[1].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())


def test_precision_names_map_to_dtypes_and_autocast():
    assert measure.resolve_precision("bf16-mixed") == measure.Precision("bf16-mixed", torch.bfloat16, True)
    assert measure.resolve_precision("16-true").cast_dtype == torch.float16
    assert measure.resolve_precision("32-true").cast_dtype is None and measure.resolve_precision("fp32").dtype == torch.float32
    assert measure.resolve_precision("bf16").autocast and measure.resolve_precision("bf16").cast_dtype is None
    assert measure.resolve_precision("64-true").cast_dtype == torch.float64
    with measure.resolve_precision("bf16-mixed").autocast_context("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        measure.resolve_precision("fp8")


def test_time_in_turn_skips_the_warm_up_alternates_the_order_and_takes_the_median():
    ticks = iter(range(1000))
    clock = lambda: float(next(ticks))  # noqa: E731 - every read advances one second
    calls = []
    seconds = measure.time_in_turn([lambda: calls.append("a"), lambda: calls.append("b")], warmup=2, iters=3, clock=clock)
    assert seconds == [1.0, 1.0]
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # in turn, the order flipped every round


def test_stopwatch_sums_its_intervals():
    ticks = iter([0.0, 2.0, 10.0, 13.0])
    watch = measure.Stopwatch("cpu", clock=lambda: next(ticks))
    watch.start()
    assert watch.stop() == 2.0
    watch.start()
    watch.stop()
    assert watch.total == 5.0 and not watch.running and watch.stop() == 0.0


def test_mfu_and_peak_sources():
    assert measure.mfu(3e9, 100.0, 1e12) == pytest.approx(0.3)
    assert measure.peak_flops("cpu", "32-true", peak_tflops=0.5) == (0.5e12, "hardware.peak_tflops")
    assert measure.peak_flops("cuda", "bf16-mixed", published=9e13) == (9e13, "Lightning's table")
    assert measure.peak_flops("cpu", "32-true", measure=False) == (None, None)
    peak, source = measure.peak_flops("cpu", "32-true")
    assert 0 < peak < 1e14 and source.startswith("measured fp32 matmul")


def test_the_machine_peak_is_measured_once_and_only_when_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(measure, "measure_peak_flops", lambda device, dtype: calls.append(dtype) or 2e11)
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (99.0, 0.0, 0.0))  # busy: used, not kept
    assert measure.machine_peak_flops("cpu", torch.float32) == (2e11, "measured fp32 matmul (machine busy, not kept)")
    assert not (tmp_path / "peak_flops.json").exists()
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    first = measure.machine_peak_flops("cpu", torch.float32)
    monkeypatch.setattr(measure, "measure_peak_flops", lambda device, dtype: calls.append(dtype) or 1e9)
    assert measure.machine_peak_flops("cpu", torch.float32) == first  # every later run divides by the same peak
    assert first[0] == 2e11 and first[1].startswith("measured fp32 matmul, kept for this machine (")
    assert calls == [torch.float32, torch.float32]
    saved = json.loads((tmp_path / "peak_flops.json").read_text())
    (key,) = saved
    assert key == measure.machine_key("cpu", torch.float32) and saved[key]["flops"] == 2e11
    measure.machine_peak_flops("cpu", torch.bfloat16)  # another precision: its own measurement
    assert calls[-1] == torch.bfloat16 and len(json.loads((tmp_path / "peak_flops.json").read_text())) == 2


def test_measured_cpu_peak_is_a_positive_rate():
    assert 0 < measure.time_matmul_flops(128, min_repeats=2) < 1e14


# Every registered network at a small size: the MACs the FLOPs callback writes into metrics.json
# are the ones `python -m vitlab.bench` reports. Networks with size settings run cut down; the timm
# baselines have fixed shapes and run at their 32 px. (One real run's metrics.json is compared with
# the bench in test_callbacks.)
SMALL = {
    "mini_vit": "depth=1,embed_dim=24,num_heads=2",
    "outgrid": "dims=[8,16,16,16],num_heads=[2,2,2,2],outlook_heads=[2,2,2,2],depths=[1,1,1,1],stem_dim=8",
    "vit": "img_size=32,embed_dim=24,depth=1,num_heads=2",
    "qavit": "embed_dim=32,depth=1,num_heads=2,num_groups=4,bank_size=4",
}


def _small_spec(name: str) -> str:
    family = next((f for f in SMALL if name.startswith(f)), None)
    return f"{name}:{SMALL[family]}" if family else name


# The big timm baselines take seconds each on 2 shared cores: they run with -m slow.
HEAVY = {"convnext_tiny", "deit_small", "efficientnetv2_s", "maxvit_nano", "maxvit_tiny", "resnet50", "swin_tiny"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()])
def test_metrics_json_macs_equal_the_bench_macs_for_every_network(name):
    torch.manual_seed(0)
    subject = bench.build_subject(_small_spec(name))
    from_bench = bench.count(subject)
    callback = FlopsCallback()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(img_size=subject.img_size), loggers=[])
    callback.on_fit_start(trainer, SimpleNamespace(net=subject.net))
    assert callback.record["macs_per_image"] == from_bench.macs > 0
    assert callback.record["macs_per_image_without_sdpa"] == from_bench.macs_without_sdpa
    assert callback.record["train_flops_per_image"] == from_bench.train_step > 2 * from_bench.forward


def test_one_precision_vocabulary_for_configs_trainer_and_bench():
    """Every name the configs and the trainer take is Lightning's; the bench's are the short ones;
    each resolves to its dtype, and an fp16 alias is refused on CPU like its long name."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from vitlab.bench import PRECISIONS as bench_names
    from vitlab.config import to_hardware
    from vitlab.errors import ConfigError
    from vitlab.measure import BENCH_PRECISIONS, SUGGESTED_PRECISIONS, TRAINER_PRECISIONS, resolve_precision
    from vitlab.training import TRAINER_PRECISIONS as trainer_names

    assert trainer_names is TRAINER_PRECISIONS and bench_names is BENCH_PRECISIONS
    assert set(SUGGESTED_PRECISIONS) <= set(TRAINER_PRECISIONS)
    assert set(TRAINER_PRECISIONS) <= set(get_args(_PRECISION_INPUT_STR)) | set(get_args(_PRECISION_INPUT_STR_ALIAS))
    assert {resolve_precision(n).dtype for n in ("16", "16-mixed", "fp16")} == {torch.float16}
    assert resolve_precision("bf16").autocast and resolve_precision("64").dtype == torch.float64
    for name in ("16", "16-mixed"):
        with pytest.raises(ConfigError, match=f"^hardware.precision: {name} needs a CUDA GPU"):
            to_hardware({"accelerator": "cpu", "precision": name})
