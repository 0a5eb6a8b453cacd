"""Parameters and FLOPs per image, counted once when fitting starts."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from vitlab.callbacks.records import RunRecord, log_once
from vitlab.measure import ImageFlops, human, image_flops


class FlopsCallback(Callback):
    """At fit start: parameters (total, trainable) and the FLOPs of one image at the data's size
    (``img_size`` overrides it), counted by :func:`vitlab.measure.image_flops` (the suite's one count,
    attention included; what it counts and what not is said there). Logged as ``model/*`` and kept in
    :attr:`record` for ``metrics.json``: ``params``, ``trainable_params``, ``flops_per_image``,
    ``macs_per_image`` (= FLOPs / 2), ``macs_per_image_without_sdpa`` (fvcore's view, which the seeds'
    tables used), ``train_flops_per_image`` (forward + backward, what MFU divides) and
    ``flops_img_size``. :attr:`flops` holds the count for other callbacks."""

    def __init__(self, img_size: int | None = None, in_chans: int = 3) -> None:
        self.img_size = img_size
        self.in_chans = in_chans
        self.record = RunRecord()
        self.flops: ImageFlops | None = None

    @staticmethod
    def of(trainer: L.Trainer) -> FlopsCallback | None:
        """The trainer's FLOPs callback, if it has one."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, FlopsCallback)), None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        params = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        self.record.put(params=params, trainable_params=trainable)
        size = self.img_size or getattr(trainer.datamodule, "img_size", None)
        if size:
            # forward, not __call__: a network compiled in place would otherwise be traced for this batch.
            self.flops = image_flops(net, size, self.in_chans, forward=net.forward)
            self.record.put(**self.flops.as_record())
            rank_zero_info(
                f"params {params:,} (trainable {trainable:,}) | {human(self.flops.macs)} MACs per {size}x{size} image "
                f"({human(self.flops.macs_without_sdpa)} without SDPA, as fvcore counts) | train step "
                f"{human(self.flops.train_step)} FLOPs per image (vitlab.measure; MACs = FLOPs / 2)"
            )
        log_once(trainer, {f"model/{k}": float(v) for k, v in self.record.items()})
