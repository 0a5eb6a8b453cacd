"""ImageClassifier: the LightningModule every vitlab family builds on.

It owns what is common to all image classifiers: the loss (label smoothing, timm's CutMix/MixUp with
soft targets), top-1/top-5 and loss for train/val/test, AdamW with no-decay groups and the per-step
warmup + cosine schedule, channels-last, ``torch.compile`` and grad-norm logging. A family subclass
adds only what is specific to it (its attention checks, extra logging).

The network is built here from plain settings (``net``: a registry name plus overrides) and the
hyper-parameters saved in checkpoints are plain numbers, strings, lists and dicts, so checkpoints
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from vitlab.checkpoint import capture_rng_state, gather_ranks, restore_rng_state
from vitlab.config import to_recipe
from vitlab.errors import ConfigError
from vitlab.layers.attention_maps import AttentionMap
from vitlab.models import create_model
from vitlab.optim import build_optimizer, build_scheduler
from vitlab.resume import (
    apply_recipe_settings,
    in_order,
    optimizer_state_by_name,
    parameter_names,
    recipe_settings,
    saved_parameter_order,
)
from vitlab.utils import derive_seed


def _accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


class ImageClassifier(L.LightningModule):
    """Image classification with a registered network.

    For networks with ``attention_maps``, the first validation batch of every epoch also checks that
    the attention weights sum to 1 (logged as ``val/attn_sum_err``; above ``attention_tol`` the run
    stops).

    Args:
        net: ``{"name": <registered network>, **constructor overrides}``; must include ``num_classes``.
        recipe: the training recipe as a plain dict (see :class:`vitlab.config.RecipeConfig`).
        compile: wrap the network's forward in ``torch.compile`` when fitting.
    """

    attention_tol: float = 1e-4
    #: What fit logs that a checkpoint or early-stopping callback can monitor (besides the network's
    #: own figures, ``train/<name>``, for networks that return them).
    monitorable: frozenset[str] = frozenset({
        "train/loss", "train/loss_step", "train/lr", "train/grad_norm", "train/top1", "train/top5",
        "val/top1", "val/top5", "val/loss", "val/loss_smoothed", "val/images", "val/top1_best",
    })

    def __init__(
        self,
        net: dict[str, Any],
        recipe: dict[str, Any] | None = None,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        net = dict(net)
        if "name" not in net:
            raise ConfigError("model.net.name: missing; set it to a registered network, e.g. mini_vit")
        self.net = create_model(net.pop("name"), **net)
        # Networks that can return figures besides the logits (entropy, lambda, bank norm) take
        # `forward_with_aux`; those are logged per epoch under train/<name>.
        self.net_returns_aux = callable(getattr(self.net, "forward_with_aux", None))
        if grad_checkpointing:
            try:
                self.net.set_grad_checkpointing(True)
            except (AttributeError, AssertionError, NotImplementedError):
                raise ConfigError(
                    f"hardware.grad_checkpointing: {type(self.net).__name__} does not support it; set it to false"
                ) from None
        self.num_classes: int = self.net.num_classes
        self.recipe = to_recipe(recipe or {})

        mixing = self.recipe.mixing
        smoothing = self.recipe.label_smoothing
        self.mixup = (
            Mixup(
                mixup_alpha=mixing.mixup_alpha,
                cutmix_alpha=mixing.cutmix_alpha,
                prob=mixing.prob,
                switch_prob=mixing.switch_prob,
                label_smoothing=smoothing,
                num_classes=self.num_classes,
            )
            if mixing.active
            else None
        )
        # With mixing, targets are soft and already smoothed by Mixup, also on batches left unmixed.
        self.soft_target_loss = SoftTargetCrossEntropy()
        # Smoothed targets sit at this value for the true class when a batch was left unmixed.
        self._clean_target_value = 1.0 - smoothing + smoothing / self.num_classes

        self.train_loss = MeanMetric()
        self.val_loss, self.val_loss_smoothed = MeanMetric(), MeanMetric()
        self.test_loss, self.test_loss_smoothed = MeanMetric(), MeanMetric()
        self.train_acc = _accuracy_metrics(self.num_classes, "train/")
        self.val_acc = _accuracy_metrics(self.num_classes, "val/")
        self.test_acc = _accuracy_metrics(self.num_classes, "test/")
        self.best_val_top1 = 0.0
        self.val_images: int | None = None  # what the last validation's scores are over
        self._grad_norm: torch.Tensor | None = None
        self._rng_state_to_restore: dict[str, Any] | None = None
        self._resumed = False
        self._recipe_settings: dict[str, Any] | None = None  # what the recipe configures, put back after a resume

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _training_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a training batch; the network's figures, where it has any, logged on the way."""
        if not self.net_returns_aux:
            return self(x)
        if self.recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, aux = self.net.forward_with_aux(x)
        for name, value in aux.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        return logits

    @property
    def has_attention_maps(self) -> bool:
        return hasattr(self.net, "attention_maps")

    def attention_maps(self, images: torch.Tensor) -> dict[str, AttentionMap]:
        """The network's attention maps, ``{name: AttentionMap}`` (each carries its layout)."""
        if not self.has_attention_maps:
            raise NotImplementedError(f"{type(self.net).__name__} exposes no attention maps")
        return self.net.attention_maps(images)

    @staticmethod
    def attention_normalisation_error(maps: dict[str, AttentionMap]) -> torch.Tensor:
        """Worst deviation from 1 of the maps' sums over the axis each map names as normalised
        (maps that are no distribution, such as a differential map, are left out)."""
        errors = [e for e in (m.normalisation_error() for m in maps.values()) if e is not None]
        if not errors:
            raise ValueError("none of the attention maps is a distribution to check")
        return torch.stack(errors).max()

    def on_fit_start(self) -> None:
        describe = getattr(self.net, "describe", None)
        if callable(describe):
            rank_zero_info(describe())

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.world_size > 1:
            self._seed_this_rank()
        if self.recipe.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if stage == "fit" and self.hparams.compile:
            # Compiling in place keeps the state-dict keys free of the `_orig_mod.` prefix; training
            # calls forward_with_aux where the network has one, which is compiled the same way.
            self.net.compile()
            if self.net_returns_aux:
                self.net.forward_with_aux = torch.compile(self.net.forward_with_aux)

    # ----------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            if x.shape[0] % 2:
                raise ConfigError(f"recipe.batch_size: CutMix/MixUp need an even per-device batch, got {x.shape[0]}")
            x, soft = self.mixup(x, y)
            logits = self._training_forward(x)
            loss = self.soft_target_loss(logits, soft)
            # Accuracy against the true labels only means something on batches left unmixed.
            if torch.all(soft.gather(1, y[:, None]) >= self._clean_target_value - 1e-6):
                self.train_acc.update(logits.detach(), y)
        else:
            logits = self._training_forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
            self.train_acc.update(logits.detach(), y)
        self.train_loss.update(loss.detach(), weight=x.shape[0])
        self.log("train/loss_step", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.train_loss.reset()
        if self.train_acc["top1"].update_called:
            self.log_dict(self.train_acc.compute())
        self.train_acc.reset()

    def _eval_step(self, batch, acc: MetricCollection, loss: MeanMetric, loss_smoothed: MeanMetric) -> None:
        x, y = batch
        logits = self(x)
        acc.update(logits, y)
        loss.update(F.cross_entropy(logits, y), weight=x.shape[0])
        smoothed = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
        loss_smoothed.update(smoothed, weight=x.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_loss, self.val_loss_smoothed)
        if batch_idx == 0 and self.has_attention_maps:
            self._check_attention(batch[0])

    def _check_attention(self, images: torch.Tensor) -> None:
        # Checked once per validation, not every forward: the check costs a forward and a host sync.
        err = self.attention_normalisation_error(self.attention_maps(images))
        self.log("val/attn_sum_err", err)
        if err > self.attention_tol:
            raise RuntimeError(f"attention weights do not sum to 1 (max deviation {err:.2e} > {self.attention_tol:.0e})")

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_acc.compute()
        self.log_dict(metrics, prog_bar=True)
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/loss_smoothed", self.val_loss_smoothed.compute())
        # How many images the scores are over (a limit_val_batches prefix or the whole split).
        self.log("val/images", self.val_loss.weight, sync_dist=True, reduce_fx="sum")
        if not self.trainer.sanity_checking:
            self.best_val_top1 = max(self.best_val_top1, metrics["val/top1"].item())
        self.log("val/top1_best", self.best_val_top1)
        for metric in (self.val_acc, self.val_loss, self.val_loss_smoothed):
            metric.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_loss, self.test_loss_smoothed)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_acc.compute())
        self.log("test/loss", self.test_loss.compute())
        self.log("test/loss_smoothed", self.test_loss_smoothed.compute())
        self.log("test/images", self.test_loss.weight, sync_dist=True, reduce_fx="sum")
        for metric in (self.test_acc, self.test_loss, self.test_loss_smoothed):
            metric.reset()

    def on_after_backward(self) -> None:
        self._grad_norm = None  # new gradients: this step's norm is computed afresh

    def gradient_norm(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """The global 2-norm of the gradients ``optimizer`` is about to apply (after AMP unscaling,
        before clipping), computed once per step: the NaN guard checks it, ``train/grad_norm`` logs it."""
        if self._grad_norm is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        return self._grad_norm

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norm = self.gradient_norm(optimizer)
        if norm is not None:
            self.log("train/grad_norm", norm)

    # ----------------------------------------------------------------------------- state
    def _seed_this_rank(self) -> None:
        # Every process starts from the same seed (identical initial weights before DDP's broadcast);
        # from here on each rank draws its own dropout masks, augmentations and mixing partners.
        seed = derive_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)), "rank", self.trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def on_train_start(self) -> None:
        # A resumed run continues the RNG streams where the checkpoint left them. Restored here, not in
        # on_load_checkpoint, so what runs in between (sanity validation, loader set-up) cannot shift
        # them; and not at the epoch's start, which a resume in the middle of an epoch does not repeat.
        if self._rng_state_to_restore is not None:
            restore_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None
        if self._resumed:
            self._apply_recipe_after_resume()
        # A run with fewer optimizer steps per epoch than log_every_n_steps would log no step metrics
        # (train/lr, train/grad_norm, train/loss_step) at all.
        steps = self.trainer.num_training_batches // max(1, self.trainer.accumulate_grad_batches)
        if 0 < steps < self.trainer.log_every_n_steps:
            self.trainer.log_every_n_steps = steps

    def _apply_recipe_after_resume(self) -> None:
        """A recipe changed on resume (``run_dir=... recipe.optimizer.lr=...``) takes effect from the
        next step, instead of the settings the checkpoint restored."""
        settings, self._recipe_settings = self._recipe_settings, None
        if settings is None:
            return
        changes = apply_recipe_settings(self.optimizers().optimizer, self.lr_schedulers(), settings)
        if changes:
            rank_zero_info("resumed with a changed recipe, applied from the next step: " + "; ".join(changes))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_top1"] = self.best_val_top1
        if "val/images" in self.trainer.callback_metrics:
            self.val_images = int(self.trainer.callback_metrics["val/images"].item())
        if self.val_images is not None:
            checkpoint["val_images"] = self.val_images
        checkpoint["rng_states"] = gather_ranks(capture_rng_state())  # every rank has its own streams

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_top1 = float(checkpoint.get("best_val_top1", 0.0))
        self.val_images = checkpoint.get("val_images")
        self._resumed = True
        states = checkpoint.get("rng_states") or []
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank < len(states):
            self._rng_state_to_restore = states[rank]
        self._optimizer_state_by_name(checkpoint)

    def _optimizer_state_by_name(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint whose network held its parameters in another order (written before a module
        moved) gets its optimizer state re-indexed by parameter name (:mod:`vitlab.resume`)."""
        saved = checkpoint.get("optimizer_states")
        order = saved_parameter_order(checkpoint.get("state_dict") or {}, self.net)
        today = [name for name, _ in self.net.named_parameters()]
        if not saved or len(saved) != 1 or order == today or sorted(order) != sorted(today):
            return
        then = build_optimizer(in_order(self.net, order), self.recipe.optimizer)
        now = build_optimizer(self.net, self.recipe.optimizer)
        saved_names = [name for group in parameter_names(then, self.net) for name in group]
        checkpoint["optimizer_states"] = [optimizer_state_by_name(saved[0], saved_names, parameter_names(now, self.net))]

    # ----------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.net, self.recipe.optimizer)
        steps_per_epoch = self._steps_per_epoch()
        scheduler = build_scheduler(
            optimizer, self.recipe.schedule, self.recipe.optimizer.lr, steps_per_epoch, self.recipe.epochs
        )
        self._recipe_settings = recipe_settings(optimizer, scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch. The schedule spans ``recipe.epochs`` of them even when
        ``trainer.max_epochs`` stops the run earlier, so a short run follows the full recipe's curve."""
        trainer = self.trainer
        if trainer.max_epochs and trainer.max_epochs > 0:
            return max(1, round(trainer.estimated_stepping_batches / trainer.max_epochs))
        return max(1, round(trainer.estimated_stepping_batches / self.recipe.epochs))
