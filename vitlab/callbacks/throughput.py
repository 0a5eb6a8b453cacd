"""Training and validation images per second per epoch, and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from vitlab.callbacks.records import record

_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16, "16-true": torch.float16,
           "64-true": torch.float64}


def time_matmul_flops(
    n: int,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    min_repeats: int = 3,
    seconds: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """FLOP/s of the fastest of the timed ``n`` x ``n`` products (``min_repeats`` of them, more while
    within ``seconds``, 50 at most), timed with ``clock``: the peak MFU is measured against. The best,
    so a busy moment does not lower it."""
    # A private generator: measuring the peak (once per process, inside the first fit) must not move
    # the global RNG streams, or a run's augmentations would depend on what the process ran before.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up: library initialisation, clocks
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - started < seconds and len(times) < 50):
        _sync(device)
        start = clock()
        a @ b
        _sync(device)
        times.append(clock() - start)
    return 2 * n**3 / min(times)


@functools.lru_cache(maxsize=8)
def measure_matmul_tflops(size: int = 512, repeats: int = 3, device: str = "cpu") -> float:
    """The best fp32 matmul rate of ``repeats`` timed ``size`` x ``size`` products, in TFLOP/s: the
    peak the MFU of a device without a published one is measured against. Measured once per process."""
    return time_matmul_flops(size, torch.device(device), min_repeats=repeats) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch: Any) -> int:
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(images.shape[0])


class ThroughputCallback(Callback):
    """Per epoch ``train/images_per_s`` and ``val/images_per_s`` (all devices together), and
    ``train/mfu`` when a peak is known.

    Times are wall-clock between the epoch's first and last batch with the device synchronised at
    both ends, data loading included (what a run really achieves); validation inside a training epoch
    is not counted as training time. MFU = 3 x forward FLOPs per image (forward + backward, the usual
    estimate; from :class:`callbacks.flops.FlopsCallback`) x images/s per device / peak. The peak is
    ``peak_tflops`` (the hardware profile's), else Lightning's table for the GPU and precision, else
    on CPU a measured fp32 matmul rate (``measure_cpu_peak``). The last epoch's figures go to
    ``metrics.json``.
    """

    def __init__(self, peak_tflops: float | None = None, measure_cpu_peak: bool = True) -> None:
        self.peak_tflops = peak_tflops
        self.measure_cpu_peak = measure_cpu_peak
        self.peak_flops: float | None = None
        self._train_images = 0
        self._train_time = 0.0
        self._train_started: float | None = None
        self._val_images = 0
        self._val_started: float | None = None
        self._resume_training = False

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = None
        if self.peak_tflops:
            self.peak_flops, source = self.peak_tflops * 1e12, "hardware.peak_tflops"
        elif pl_module.device.type == "cuda":
            flops = get_available_flops(pl_module.device, _DTYPES.get(str(trainer.precision), torch.float32))
            if flops:
                self.peak_flops, source = float(flops), "Lightning's table"
        elif pl_module.device.type == "cpu" and self.measure_cpu_peak:
            self.peak_flops, source = measure_matmul_tflops() * 1e12, "measured fp32 matmul"
        if self.peak_flops:
            rank_zero_info(f"MFU against a peak of {self.peak_flops / 1e12:.3g} TFLOP/s ({source})")
            record(pl_module, peak_tflops=self.peak_flops / 1e12, peak_source=source)

    # ------------------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_images, self._train_time, self._resume_training = 0, 0.0, False
        self._sync(pl_module)
        self._train_started = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._resume_training:
            self._resume_training = False
            self._sync(pl_module)
            self._train_started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._train_images += _batch_size(batch)

    def _pause_training(self, pl_module: L.LightningModule) -> None:
        if self._train_started is not None:
            self._sync(pl_module)
            self._train_time += time.perf_counter() - self._train_started
            self._train_started = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause_training(pl_module)
        if not self._train_images or self._train_time <= 0:
            return
        per_device = self._train_images / self._train_time
        values = {"train/images_per_s": per_device * trainer.world_size}
        flops = getattr(pl_module, "run_metrics", {}).get("flops_per_image")
        if flops and self.peak_flops:
            values["train/mfu"] = 3 * flops * per_device / self.peak_flops
        for name, value in values.items():
            pl_module.log(name, value, on_epoch=True, sync_dist=False)
        record(pl_module, **values)

    # ------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._pause_training(pl_module)
        self._val_images = 0
        self._sync(pl_module)
        self._val_started = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._val_images += _batch_size(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._val_started is None:
            return
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._val_started
        self._val_started = None
        if self._val_images and elapsed > 0:
            value = self._val_images / elapsed * trainer.world_size
            pl_module.log("val/images_per_s", value, on_epoch=True)
            record(pl_module, **{"val/images_per_s": value})
        # If the training epoch goes on (validation every k batches), its clock restarts at its next batch.
        self._resume_training = trainer.state.fn == "fit"
