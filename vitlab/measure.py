"""The one place vitlab measures: device sync, precision -> dtype, timing, FLOPs, MFU and memory.

Free of Lightning and Hydra, so ``vitlab.bench``, the throughput and FLOPs callbacks and
``vitlab.evaluate`` all measure the same way (and a notebook can too):

- :func:`synchronize` waits for the device before a clock is read.
- :func:`resolve_precision` maps a precision name (Lightning's ``32-true`` / ``bf16-mixed`` / ...,
  or the bench's ``fp32`` / ``bf16`` / ``fp16``) to its compute dtype and whether it autocasts.
- :class:`Stopwatch` sums device-synchronised intervals; :func:`time_in_turn` times closures after
  untimed warm-up rounds, one after another in every round (so load from other processes hits them
  alike); :func:`time_matmul_flops` / :func:`measure_peak_flops` time the matmul peak.
- :func:`count_flops` and :func:`image_flops` are the suite's FLOP count (see :func:`count_flops`
  for what it counts and what not); :func:`register_module_flops` adds a formula for a module whose
  work the counter cannot see.
- :func:`mfu` is the one MFU definition: (forward + backward FLOPs of a train step per image, as
  counted) x images per second per device / the device's peak FLOP/s.
- :func:`cuda_peak_memory`, :func:`saved_tensor_bytes` and :func:`train_state_bytes` measure (CUDA)
  or estimate (CPU) the memory of a train step.

Importing this module registers FLOP formulas with ``torch.utils.flop_counter`` for the SDPA kernels
torch's own table lacks (the CPU flash kernel and its backward among them), so any FlopCounterMode
in the process counts attention on every backend.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from vitlab.utils import cache_dir

aten = torch.ops.aten


# ----------------------------------------------------------------------------------------- device
def synchronize(device: torch.device | str) -> None:
    """Wait until the device has finished its queued work (a no-op on CPU), so a clock read after it
    measures the work and not the launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


@dataclass(frozen=True)
class Precision:
    """What a precision name means for a forward pass: the dtype the matmuls run in, and whether
    that comes from autocast (``-mixed``, the bench's ``bf16``/``fp16``: weights stay fp32) or from
    casting the weights and inputs (``-true``)."""

    name: str
    dtype: torch.dtype
    autocast: bool

    def autocast_context(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.dtype)

    @property
    def cast_dtype(self) -> torch.dtype | None:
        """The dtype weights and inputs are cast to (``-true`` precisions other than fp32), else None."""
        return None if self.autocast or self.dtype == torch.float32 else self.dtype


#: Every precision name vitlab takes, as (dtype, autocast): the one vocabulary of the configs, the
#: trainer and the bench.
_PRECISIONS = {
    # Lightning's names (hardware.precision, trainer.precision), then its short aliases
    "32-true": (torch.float32, False),
    "16-mixed": (torch.float16, True),
    "bf16-mixed": (torch.bfloat16, True),
    "16-true": (torch.float16, False),
    "bf16-true": (torch.bfloat16, False),
    "64-true": (torch.float64, False),
    "transformer-engine": (torch.bfloat16, True),
    "32": (torch.float32, False),
    "16": (torch.float16, True),
    "bf16": (torch.bfloat16, True),
    "64": (torch.float64, False),
    # the bench's (--precision): fp32, or bf16 / fp16 autocast ("bf16" above)
    "fp32": (torch.float32, False),
    "fp16": (torch.float16, True),
}
#: The names ``hardware.precision`` and ``trainer.precision`` take (Lightning's), and the ones an
#: error message offers (the long names in everyday use).
TRAINER_PRECISIONS = tuple(name for name in _PRECISIONS if name not in ("fp32", "fp16"))
SUGGESTED_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
#: The names ``vitlab-bench --precision`` takes.
BENCH_PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(name: str | int) -> Precision:
    """The :class:`Precision` of a Lightning or bench precision name; ValueError names the options."""
    key = str(name)
    if key not in _PRECISIONS:
        raise ValueError(f"unknown precision {key!r}; use one of {', '.join(_PRECISIONS)}")
    dtype, autocast = _PRECISIONS[key]
    return Precision(key, dtype, autocast)


# ----------------------------------------------------------------------------------------- timing
class Stopwatch:
    """Sums intervals between :meth:`start` and :meth:`stop`, the device synchronised at both ends
    (so queued GPU work falls inside the interval that launched it)."""

    def __init__(self, device: torch.device | str = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = torch.device(device)
        self.clock = clock
        self.total = 0.0
        self._started: float | None = None

    @property
    def running(self) -> bool:
        return self._started is not None

    def reset(self) -> None:
        self.total, self._started = 0.0, None

    def start(self) -> None:
        synchronize(self.device)
        self._started = self.clock()

    def stop(self) -> float:
        """End the interval (if one runs); returns its length, added to :attr:`total`."""
        if self._started is None:
            return 0.0
        synchronize(self.device)
        elapsed = self.clock() - self._started
        self._started = None
        self.total += elapsed
        return elapsed


def time_in_turn(steps: Sequence[Callable[[], Any]], warmup: int, iters: int, device: torch.device | str = "cpu",
                 clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Median seconds per call of each closure over ``iters`` timed rounds after ``warmup`` untimed
    ones (compilation, allocator and cache warm-up fall there); in every round the closures run one
    after another, so a change of load on a shared machine hits all of them alike. Every other round
    runs them in reverse order (A B, B A, ...): whichever runs first after the other's step can find
    the caches cold or the load just changed, and that position then falls to each alike."""
    watch = Stopwatch(device, clock)
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(warmup + iters):
        order = range(len(steps)) if round_ % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            step = steps[i]
            watch.start()
            step()
            elapsed = watch.stop()
            if round_ >= warmup:
                times[i].append(elapsed)
    return [statistics.median(t) for t in times]


def time_matmul_flops(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      min_repeats: int = 3, seconds: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s (2 n^3 per product) of the fastest of the timed ``n`` x ``n`` products: ``min_repeats``
    of them, more while within ``seconds``, 50 at most, after one untimed warm-up product. The best,
    so a busy moment on a shared machine does not lower it."""
    device = torch.device(device)
    # A private generator: measuring the peak (once per process, inside the first fit) must not move
    # the global RNG streams, or a run's augmentations would depend on what the process ran before.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b  # library initialisation, clocks
    watch = Stopwatch(device, clock)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - started < seconds and len(times) < 50):
        watch.start()
        a @ b
        times.append(watch.stop())
    return 2 * n**3 / max(min(times), 1e-12)


def peak_matmul_size(device: torch.device | str) -> int:
    """The square matmul the peak is timed with: large enough to run near the device's best rate."""
    return 8192 if torch.device(device).type == "cuda" else 1024


@functools.lru_cache(maxsize=16)
def _cached_peak(device: str, dtype: torch.dtype, n: int, min_repeats: int) -> float:
    return time_matmul_flops(n, torch.device(device), dtype, min_repeats=min_repeats)


def measure_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, seconds: float = 0.0,
                       clock: Callable[[], float] | None = None, cache: bool = True) -> float:
    """The peak MFU is measured against where no published one is known: the FLOP/s of a
    :func:`peak_matmul_size` square matmul in ``dtype``, the best of at least 3 (more within
    ``seconds``). With ``cache`` (and the default clock and no ``seconds``) it is measured once per
    process and device."""
    device = torch.device(device)
    n = peak_matmul_size(device)
    if cache and clock is None and seconds == 0.0:
        return _cached_peak(str(device), dtype, n, 3)
    return time_matmul_flops(n, device, dtype, seconds=seconds, clock=clock or time.perf_counter)


def machine_key(device: torch.device | str, dtype: torch.dtype) -> str:
    """What a measured peak depends on: the host, its processor, the device, the dtype, torch's
    version and its thread count."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    return f"{socket.gethostname()}|{cpu}|{torch.device(device)}|{dtype}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def machine_peak_flops(device: torch.device | str, dtype: torch.dtype) -> tuple[float, str]:
    """``(peak FLOP/s, source)`` of this machine for ``dtype``: measured once (:func:`measure_peak_flops`)
    and kept in ``<cache_dir>/peak_flops.json``, so every run and the bench divide by the same peak. A
    measurement taken while the machine is busy (load average above 1.5 per core) is used but not
    kept."""
    path, key = cache_dir() / "peak_flops.json", machine_key(device, dtype)
    name = "fp32" if dtype == torch.float32 else str(dtype).removeprefix("torch.")
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and isinstance(known[key].get("flops"), int | float):
        return float(known[key]["flops"]), f"measured {name} matmul, kept for this machine ({known[key].get('date')})"
    flops = measure_peak_flops(device, dtype)
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    if load > 1.5:
        return flops, f"measured {name} matmul (machine busy, not kept)"
    known[key] = {"flops": flops, "date": time.strftime("%Y-%m-%d"), "load_per_core": round(load, 2)}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2) + "\n")
        os.replace(tmp, path)
    return flops, f"measured {name} matmul, kept for this machine ({known[key]['date']})"


def peak_flops(device: torch.device | str, precision: str | Precision = "32-true", peak_tflops: float | None = None,
               published: float | None = None, measure: bool = True) -> tuple[float | None, str | None]:
    """``(peak FLOP/s, where it came from)``: ``peak_tflops`` when given (a hardware profile's), else
    ``published`` (a vendor table's figure for the device and precision, e.g. Lightning's), else
    (``measure``) this machine's peak in the precision's dtype (:func:`machine_peak_flops`);
    ``(None, None)`` when none is known."""
    if peak_tflops:
        return float(peak_tflops) * 1e12, "hardware.peak_tflops"
    if published:
        return float(published), "Lightning's table"
    if measure:
        prec = precision if isinstance(precision, Precision) else resolve_precision(precision)
        return machine_peak_flops(device, prec.dtype)
    return None, None


def mfu(train_flops_per_image: float, images_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation, the suite's one definition: the FLOPs of a train step per image
    (forward + backward as :func:`image_flops` counts them; recomputation, optimizer and element-wise
    work not included) x images per second on one device / that device's peak FLOP/s."""
    return train_flops_per_image * images_per_s / peak


# ----------------------------------------------------------------------------------------- memory
def cuda_peak_memory(step: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes the CUDA caching allocator held for tensors while ``step`` ran."""
    device = torch.device(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def saved_tensor_bytes(forward: Callable[[], Any], exclude: Sequence[torch.Tensor] = ()) -> int:
    """Bytes autograd keeps for the backward of ``forward()`` (each storage once, the storages of
    ``exclude`` -- the parameters -- left out): the activation memory of a train step, measured on
    any device, also on CPU where torch keeps no allocator statistics."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(size for ptr, size in seen.items() if ptr not in skip)


def train_state_bytes(parameters: Sequence[torch.Tensor], optimizer_states: int = 2) -> int:
    """Bytes of the weights, their gradients and ``optimizer_states`` tensors per weight (AdamW: 2)."""
    return sum(p.numel() * p.element_size() for p in parameters) * (2 + optimizer_states)


# ----------------------------------------------------------------------------------------- FLOPs
def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # torch's convention for its fused kernels: the gradient's 4 products plus the recomputed scores.
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _sdpa_backward_model_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
    # The suite's convention: the 4 products of the model's gradient (dV, dP, dQ, dK), twice the
    # forward, without the scores a fused kernel recomputes; so every backend counts what math does.
    return 2 * flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# SDPA kernels whose FLOPs torch's table lacks: the CPU flash kernel (what SDPA runs on CPU) and the
# backend-overridable one (XPU, HPU, ...) with their backwards, and MPS's math kernel: each two
# products, 4 * B * H * N_q * N_k * d, forward.
_SDPA_FORWARD = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable",
                 "_scaled_dot_product_attention_math_for_mps")
_SDPA_BACKWARD = ("_scaled_dot_product_flash_attention_for_cpu_backward",
                  "_scaled_dot_product_fused_attention_overrideable_backward")


def _register_sdpa_formulas() -> None:
    for names, formula in ((_SDPA_FORWARD, _sdpa_forward_flops), (_SDPA_BACKWARD, _sdpa_backward_flops)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None and op not in flop_counter.flop_registry:  # a newer torch may have its own
                flop_counter.register_flop_formula(op)(formula)


_register_sdpa_formulas()


class _SDPACalls(TorchFunctionMode):
    """Adds up the forward FLOPs of ``F.scaled_dot_product_attention`` calls, whichever kernel then
    runs them (the math backend reaches the flop counter as plain matmuls): what fvcore leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = dict(zip(("query", "key", "value"), args))
            q, k, v = (kwargs.get(name, named.get(name)) for name in ("query", "key", "value"))
            self.flops += flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)
        return func(*args, **kwargs)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    # torch's formula counts the weight gradient of a grouped convolution as if it were dense
    # (groups times too many: 64x for a depthwise 3x3 over 64 channels). Each of the input and weight
    # gradients costs what the forward did.
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# Where count_flops departs from torch's table: grouped-convolution backward, and SDPA backward on
# every backend as twice its forward. (The backwards of the (B, H, N, d) SDPA ops all take
# grad_out, query, key, value first.)
FLOP_FIXES: dict[Any, Callable[..., int]] = {aten.convolution_backward: _conv_backward_flops}
FLOP_FIXES.update({
    getattr(aten, name): _sdpa_backward_model_flops
    for name in dir(aten)
    if name.startswith("_scaled_dot_product_") and name.endswith("_backward")
})

# Module type -> (formula(module, inputs) -> forward FLOPs, backward / forward ratio).
_MODULE_FORMULAS: dict[type[nn.Module], tuple[Callable[[nn.Module, tuple], int], float]] = {}


def register_module_flops(module_type: type[nn.Module], backward_ratio: float = 2.0):
    """Decorator: ``formula(module, inputs) -> FLOPs`` of the work inside ``module_type`` that torch's
    counter cannot see (a custom autograd function made of element-wise multiply-adds); counted on
    every forward of such a module, and ``backward_ratio`` times that when a backward reaches it
    (2: the gradients of both operands of a product)."""

    def register(formula: Callable[[nn.Module, tuple], int]) -> Callable[[nn.Module, tuple], int]:
        _MODULE_FORMULAS[module_type] = (formula, backward_ratio)
        return formula

    return register


@dataclass
class FlopCount:
    """FLOPs of one call (its whole batch): ``forward`` and ``backward`` totals, the part of the
    forward spent in ``F.scaled_dot_product_attention`` calls, and the totals per op (``aten.mm``,
    ..., ``<Module> (formula)``)."""

    forward: int = 0
    backward: int = 0
    sdpa_forward: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.forward + self.backward


@dataclass(frozen=True)
class ImageFlops:
    """Per-image figures of :func:`image_flops`. MACs are FLOPs / 2 (a multiply-add is two FLOPs);
    ``*_without_sdpa`` leave out the SDPA kernels, as fvcore (which the seeds' tables came from)
    does."""

    img_size: int
    forward: int
    forward_without_sdpa: int
    train_step: int

    @property
    def macs(self) -> int:
        return self.forward // 2

    @property
    def macs_without_sdpa(self) -> int:
        return self.forward_without_sdpa // 2

    def as_record(self) -> dict[str, int]:
        """The keys ``metrics.json`` and the bench's CSV hold."""
        return {
            "flops_per_image": self.forward,
            "macs_per_image": self.macs,
            "macs_per_image_without_sdpa": self.macs_without_sdpa,
            "train_flops_per_image": self.train_step,
            "flops_img_size": self.img_size,
        }


def _formula_hooks(modules: Sequence[nn.Module], count: FlopCount, backward: bool) -> list[Any]:
    handles = []

    def add(key: str, flops: int, in_backward: bool) -> None:
        if in_backward:
            count.backward += flops
        else:
            count.forward += flops
        count.by_op[key] = count.by_op.get(key, 0) + flops

    for module in modules:
        entry = _MODULE_FORMULAS.get(type(module))
        if entry is None:
            continue
        formula, ratio = entry
        key = f"{type(module).__name__} (formula)"

        def hook(mod, inputs, output, formula=formula, ratio=ratio, key=key) -> None:
            flops = int(formula(mod, inputs))
            add(key, flops, False)
            out = output[0] if isinstance(output, (tuple, list)) else output
            if backward and isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda grad: add(key, int(ratio * flops), True))

        handles.append(module.register_forward_hook(hook))
    return handles


def _add_counter(count: FlopCount, counter: FlopCounterMode, backward: bool) -> None:
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op)
        count.by_op[name] = count.by_op.get(name, 0) + flops
        if backward:
            count.backward += flops
        else:
            count.forward += flops


def count_flops(model: nn.Module, inputs: torch.Tensor, *, backward: bool = False,
                forward: Callable[[torch.Tensor], Any] | None = None) -> FlopCount:
    """The FLOPs of ``model`` on ``inputs`` (the whole batch): the one FLOP count of the suite.

    Counted (by ``torch.utils.flop_counter``, a multiply-add = 2 FLOPs): matrix products (mm, bmm,
    addmm, baddbmm, einsum and linear through them), convolutions, and scaled dot-product attention on
    every backend -- math (its matmuls), flash, memory-efficient, cuDNN and the CPU kernels (formulas
    registered here where torch has none) -- as 4 * B * H * N_q * N_k * d forward and twice that
    backward (the model's gradient; fused kernels also recompute the scores, which is not counted,
    so every backend gives what the math path does); grouped-convolution backward as twice its
    forward (torch's formula overcounts it);
    and modules registered with :func:`register_module_flops` by their formula (OutGrid's dynamic
    kernel: 2 * k^2 * C * H * W per image forward). Not counted: norms, softmax, activations,
    element-wise ops (residual adds, scaling, masks, dropout), pooling, the loss and the optimizer;
    nor calls into the optional flash-attn package (CUDA, fp16/bf16 weights only), which torch's
    counter cannot see.

    The seeds' published tables were counted with fvcore, which skips SDPA calls altogether, so a
    comparison with a seed shows both :attr:`FlopCount.forward` and ``forward - sdpa_forward`` (the
    "without SDPA" column).

    ``forward`` (default ``model``) is what is called, e.g. ``model.forward`` to bypass a module
    compiled in place. With ``backward``, the gradients of a cross-entropy over the outputs with
    respect to the parameters are computed too (``torch.autograd.grad``: no ``.grad`` is touched)
    and counted separately; otherwise the forward runs under ``no_grad``.
    """
    fn = forward or model
    count = FlopCount()
    handles = _formula_hooks(list(model.modules()), count, backward)
    try:
        with contextlib.ExitStack() as stack:
            if not backward:
                stack.enter_context(torch.no_grad())
            with FlopCounterMode(display=False, custom_mapping=FLOP_FIXES) as counter, _SDPACalls() as sdpa:
                out = fn(inputs)
            _add_counter(count, counter, backward=False)
            count.sdpa_forward = sdpa.flops
            if backward:
                logits = out[0] if isinstance(out, (tuple, list)) else out
                params = [p for p in model.parameters() if p.requires_grad]
                if params and logits.requires_grad:
                    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
                    loss = F.cross_entropy(logits.float().flatten(1), target)
                    with FlopCounterMode(display=False, custom_mapping=FLOP_FIXES) as counter:
                        torch.autograd.grad(loss, params, allow_unused=True)
                    _add_counter(count, counter, backward=True)
    finally:
        for handle in handles:
            handle.remove()
    return count


def image_flops(model: nn.Module, img_size: int | Sequence[int], in_chans: int = 3, *,
                forward: Callable[[torch.Tensor], Any] | None = None, batch: int = 2) -> ImageFlops:
    """Per-image FLOPs of ``model`` at ``img_size``: the forward, the forward without SDPA kernels
    (fvcore's view) and a train step (forward + backward), counted by :func:`count_flops` on a batch
    of ``batch`` zero images (2: batch statistics stay defined) and divided by it.

    Counted in eval mode, so nothing about the model changes (no dropout masks drawn, no running
    statistics updated, no RNG consumed) and the count is the same wherever it is taken: the FLOPs
    callback at fit start, ``vitlab.bench`` and ``vitlab.evaluate`` all report this figure. Dropout
    and drop-path are element-wise and not counted, so train mode would count the same. The input
    takes the device and (floating) dtype of the model's first parameter.
    """
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(batch, in_chans, height, width, device=device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        count = count_flops(model, x, backward=True, forward=forward)
    finally:
        for module, training in modes.items():
            module.training = training
    return ImageFlops(
        img_size=height,
        forward=count.forward // batch,
        forward_without_sdpa=(count.forward - count.sdpa_forward) // batch,
        train_step=count.total // batch,
    )


def human(value: float) -> str:
    """``1.23G`` / ``45.6M`` / ``7.89K``: a count for a log line."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"
