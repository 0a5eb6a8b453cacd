"""Optimizer and learning-rate schedule built from the recipe."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import create_optimizer_v2
from torch import nn

from vitlab.config import OptimizerConfig, ScheduleConfig


#: Devices with torch's fused Adam/AdamW kernels, where ``recipe.optimizer.fused=null`` turns them on.
FUSED_DEVICES = ("cuda", "cpu")


def build_optimizer(net: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory: with ``exclude_from_decay`` it puts 1-D parameters (biases, norm
    weights) and the names in ``net.no_weight_decay()`` (position tables, CLS tokens) in a group
    without weight decay; without it every parameter is decayed. Adam/AdamW use the fused step when
    ``cfg.fused`` says so (``None``: on CUDA and the CPU). ``cfg.layer_decay`` gives each of the network's layer
    groups (``group_matcher``) its own LR scale, as timm's layer-wise LR decay."""
    kwargs = {"momentum": cfg.momentum} if cfg.name == "sgd" else {"betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.name in ("adam", "adamw"):
        fused = cfg.fused
        if fused is None:
            # auto: the fused step where torch has it. On the CPU too: it updates the same values as
            # the foreach default (within float32 rounding) 3-5x faster (bench/RESULTS.md).
            fused = all(p.device.type in FUSED_DEVICES for p in net.parameters())
        kwargs["fused"] = fused
    if cfg.layer_decay is not None:
        # Layer decay needs the module (its group_matcher); the names in no_weight_decay() are then
        # always undecayed, 1-D parameters as exclude_from_decay says.
        optimizer = create_optimizer_v2(
            net, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
            filter_bias_and_bn=cfg.exclude_from_decay, **kwargs,
        )
        # timm's own schedulers apply each group's lr_scale; the LambdaLR schedule here scales the
        # group's initial LR, so the scale goes into it.
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        return optimizer
    # Given bare parameters, timm cannot consult no_weight_decay() and decays them all.
    return create_optimizer_v2(
        net if cfg.exclude_from_decay else net.parameters(),
        opt=cfg.name,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        filter_bias_and_bn=cfg.exclude_from_decay,
        **kwargs,
    )


class WarmupCosine:
    """LR multiplier at optimizer step ``s`` (0-based): a linear rise from ``warmup_factor`` to 1 over
    ``warmup_steps``, then a cosine from 1 to ``min_factor`` at ``total_steps``, flat after that.

    A plain object with number attributes, so LambdaLR's state dict (and so a checkpoint) holds
    numbers only.
    """

    def __init__(
        self,
        warmup_steps: int,
        total_steps: int,
        warmup_factor: float = 0.0,
        min_factor: float = 0.0,
        first_step_peak: bool = False,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.warmup_steps = min(warmup_steps, total_steps)
        self.total_steps = total_steps
        self.warmup_factor = warmup_factor
        self.min_factor = min_factor
        self.first_step_peak = first_step_peak

    def __call__(self, step: int) -> float:
        if self.first_step_peak:
            # The seeds' off-by-one: step 0 ran at the construction LR (the peak), and every later step
            # used the schedule's value one step behind, starting the warmup from zero.
            if step == 0:
                return 1.0
            return self._factor(step, warmup_factor=0.0)
        return self._factor(step, self.warmup_factor)

    def _factor(self, step: int, warmup_factor: float) -> float:
        if step < self.warmup_steps:
            return warmup_factor + (1.0 - warmup_factor) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> int:
    """The warmup's length in steps. A schedule of ``epochs`` no longer than the recipe's
    ``warmup_epochs`` (``recipe.epochs=2`` on a recipe that warms up for 10) warms up over the first
    half of its steps instead, so that it always ends on a cosine decay (:func:`shortened_warmup`
    says so in one line)."""
    total = steps_per_epoch * epochs
    if cfg.warmup_epochs is None:
        return round((cfg.warmup_ratio or 0.0) * total)
    if cfg.warmup_epochs >= epochs:
        return total // 2
    return round(cfg.warmup_epochs * steps_per_epoch)


def shortened_warmup(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> str | None:
    """The line that tells a run its warmup was shortened to half the run; None when it was not."""
    if cfg.warmup_epochs is None or cfg.warmup_epochs < epochs:
        return None
    warmup = warmup_steps(cfg, steps_per_epoch, epochs) / steps_per_epoch
    return (
        f"recipe.epochs={epochs} leaves no decay after the recipe's {cfg.warmup_epochs:g} warmup epochs: "
        f"warmup {warmup:g} epoch(s) of {epochs} (half the run), then the cosine decay"
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr: float, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay over ``epochs`` (:class:`WarmupCosine`), stepped per optimizer
    step; the warmup as :func:`warmup_steps` says."""
    total = steps_per_epoch * epochs
    warmup = warmup_steps(cfg, steps_per_epoch, epochs)
    note = shortened_warmup(cfg, steps_per_epoch, epochs)
    if note:
        rank_zero_info(note)
    schedule = WarmupCosine(
        warmup_steps=warmup,
        total_steps=total,
        warmup_factor=min(1.0, cfg.warmup_lr / lr),
        min_factor=min(1.0, cfg.min_lr / lr),
        first_step_peak=cfg.first_step_peak,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
