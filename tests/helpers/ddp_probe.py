"""A callback for the DDP test: each rank writes what it ended with, so the test can compare ranks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class RankReport(Callback):
    """Writes ``<out_dir>/rank<r>.json``: the world size, the seed the rank trained with, its last
    validation top-1 and a SHA-256 of its final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.report: dict = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report["initial_seed"] = torch.initial_seed()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report["val_top1"] = float(trainer.callback_metrics["val/top1"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.report.update(
            rank=trainer.global_rank, world_size=trainer.world_size, global_step=trainer.global_step,
            weights_sha256=digest.hexdigest(), train_batches=trainer.num_training_batches,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.report))
