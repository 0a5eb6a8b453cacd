"""Training and validation images per second per epoch, model FLOPs utilisation (MFU) and, on CUDA,
the peak memory of training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from vitlab.callbacks.flops import FlopsCallback
from vitlab.callbacks.records import RunRecord
from vitlab.measure import Stopwatch, mfu, peak_flops, resolve_precision


def _batch_size(batch: Any) -> int:
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(images.shape[0])


class ThroughputCallback(Callback):
    """Per epoch ``train/images_per_s`` and ``val/images_per_s`` (all devices together),
    ``train/mfu`` when a peak is known, and ``train/peak_mem_mb`` on CUDA.

    Times are wall-clock between the epoch's first and last batch with the device synchronised at
    both ends (:class:`vitlab.measure.Stopwatch`), data loading included (what a run really
    achieves); validation inside a training epoch is not counted as training time. MFU is
    :func:`vitlab.measure.mfu`: the train-step FLOPs per image counted by the FLOPs callback (forward
    + backward) x images/s per device / the peak, which is ``peak_tflops`` (the hardware profile's),
    else Lightning's table for the GPU and precision, else on CPU a measured fp32 matmul rate
    (``measure_cpu_peak``). Without a FLOPs callback there is no MFU. The last epoch's figures are
    kept in :attr:`record` for ``metrics.json``.
    """

    def __init__(self, peak_tflops: float | None = None, measure_cpu_peak: bool = True) -> None:
        self.peak_tflops = peak_tflops
        self.measure_cpu_peak = measure_cpu_peak
        self.peak_flops: float | None = None
        self.record = RunRecord()
        self._train_images = 0
        self._train_watch: Stopwatch | None = None
        self._val_images = 0
        self._val_watch: Stopwatch | None = None
        self._resume_training = False

    def state_dict(self) -> dict[str, Any]:
        # A resumed run that trains no further epoch still reports the last epoch's figures.
        return {"record": dict(self.record)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.record.put(**state_dict.get("record", {}))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._train_watch, self._val_watch = Stopwatch(device), Stopwatch(device)
        precision = resolve_precision(str(trainer.precision))
        published = get_available_flops(device, precision.dtype) if device.type == "cuda" else None
        self.peak_flops, source = peak_flops(device, precision, self.peak_tflops, published,
                                             measure=device.type == "cpu" and self.measure_cpu_peak)
        if self.peak_flops:
            rank_zero_info(f"MFU against a peak of {self.peak_flops / 1e12:.3g} TFLOP/s ({source})")
            self.record.put(peak_tflops=self.peak_flops / 1e12, peak_source=source)

    # ------------------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_images, self._resume_training = 0, False
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._train_watch.reset()
        self._train_watch.start()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._resume_training:
            self._resume_training = False
            self._train_watch.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._train_images += _batch_size(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_watch.stop()
        seconds = self._train_watch.total
        if not self._train_images or seconds <= 0:
            return
        per_device = self._train_images / seconds
        values = {"train/images_per_s": per_device * trainer.world_size}
        flops = FlopsCallback.of(trainer)
        if flops is not None and flops.flops is not None and self.peak_flops:
            values["train/mfu"] = mfu(flops.flops.train_step, per_device, self.peak_flops)
        if pl_module.device.type == "cuda":
            values["train/peak_mem_mb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        for name, value in values.items():
            pl_module.log(name, value, on_epoch=True, sync_dist=False)
        self.record.put(**values)

    # ------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._train_watch is not None:
            self._train_watch.stop()
        self._val_images = 0
        if self._val_watch is None:  # validate() without fit
            self._val_watch = Stopwatch(pl_module.device)
        self._val_watch.reset()
        self._val_watch.start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._val_images += _batch_size(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._val_watch is None or not self._val_watch.running:
            return
        elapsed = self._val_watch.stop()
        if self._val_images and elapsed > 0:
            value = self._val_images / elapsed * trainer.world_size
            pl_module.log("val/images_per_s", value, on_epoch=True)
            self.record.put(**{"val/images_per_s": value})
        # If the training epoch goes on (validation every k batches), its clock restarts at its next batch.
        self._resume_training = trainer.state.fn == "fit"
