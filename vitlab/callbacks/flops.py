"""Parameters and FLOPs per image, counted once when fitting starts."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitlab.callbacks.records import log_once, record


def count_flops(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass, from torch's own counter (matmuls, convolutions and SDPA; element-wise
    ops, norms and softmax are not counted). A multiply-accumulate is two FLOPs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops()


def _human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


class FlopsCallback(Callback):
    """At fit start: parameters (total, trainable) and FLOPs / MACs of one image at the data's size
    (``img_size`` overrides it), in eval mode. Logged as ``model/*`` and recorded for ``metrics.json``
    as ``params``, ``trainable_params``, ``flops_per_image`` and ``macs_per_image`` (= FLOPs / 2)."""

    def __init__(self, img_size: int | None = None, in_chans: int = 3) -> None:
        self.img_size = img_size
        self.in_chans = in_chans

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        params = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        values: dict[str, float] = {"params": params, "trainable_params": trainable}
        size = self.img_size or getattr(trainer.datamodule, "img_size", None)
        if size:
            was_training = net.training
            net.eval()
            x = torch.zeros(1, self.in_chans, size, size, device=pl_module.device)
            # forward, not __call__: a network compiled in place would otherwise be traced for one image.
            flops = count_flops(net.forward, x)
            net.train(was_training)
            values.update(flops_per_image=flops, macs_per_image=flops // 2, flops_img_size=size)
            rank_zero_info(
                f"params {params:,} (trainable {trainable:,}) | {_human(flops)} FLOPs = {_human(flops / 2)} MACs per "
                f"{size}x{size} image (torch FlopCounterMode; MACs = FLOPs / 2)"
            )
        record(pl_module, **values)
        log_once(trainer, {f"model/{k}": float(v) for k, v in values.items()})
