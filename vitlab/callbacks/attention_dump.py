"""Attention maps of a fixed batch of validation images, every N epochs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from vitlab.viz import denormalise, figure_to_array, overlay_figure, overlay_heatmaps


class AttentionDumpCallback(Callback):
    """Every ``every_n_epochs`` epochs (and after the last one), the family's ``attention_maps`` of the
    first ``num_images`` validation images (the same images each time: validation is not shuffled):

    * ``<dirpath>/epoch_NNN/attention_maps.pt``: ``{"epoch", "images", "maps": {name: tensor},
      "layouts": {name: the map's metadata}}``, raw;
    * ``<dirpath>/epoch_NNN/<map name>.png``: the inputs with each map laid over them (see
      :func:`vitlab.viz.overlay_heatmaps` for what each layout shows);
    * the same pictures in TensorBoard under ``attention/<map name>``.

    ``every_n_epochs: 0`` turns it off; families without attention maps are skipped. A folder that
    already exists (a resumed run repeating an epoch) is left as it is.
    """

    def __init__(self, every_n_epochs: int = 0, num_images: int = 8, dirpath: str = "attention", tensorboard: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.dirpath = Path(dirpath)
        self.tensorboard = tensorboard
        self.images: torch.Tensor | None = None

    def _active(self, pl_module: L.LightningModule) -> bool:
        return self.every_n_epochs > 0 and self.num_images > 0 and getattr(pl_module, "has_attention_maps", False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0 and self._active(pl_module):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            self.images = images[: self.num_images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.images is None or not self._active(pl_module) or trainer.state.fn != "fit":
            return
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if (epoch % self.every_n_epochs and not last) or not trainer.is_global_zero:
            return
        self.dump(trainer, pl_module, epoch)

    def dump(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> Path | None:
        folder = self.dirpath / f"epoch_{epoch:03d}"
        if folder.exists():
            rank_zero_warn(f"attention dump: {folder} exists already (a resumed run?); left as it is")
            return None
        folder.mkdir(parents=True)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            maps = pl_module.attention_maps(self.images.to(pl_module.device))
        pl_module.train(was_training)
        maps = {name: m.detach() for name, m in maps.items()}
        torch.save(
            {"epoch": epoch, "images": self.images, "maps": {name: m.weights for name, m in maps.items()},
             "layouts": {name: m.describe() for name, m in maps.items()}},
            folder / "attention_maps.pt",
        )

        import matplotlib.pyplot as plt

        datamodule = trainer.datamodule
        shown = denormalise(self.images, getattr(datamodule, "mean", None), getattr(datamodule, "std", None))
        boards = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if self.tensorboard else []
        for name, (heat, what) in overlay_heatmaps(maps).items():
            fig = overlay_figure(shown, heat, f"epoch {epoch}, {name}: {what}")
            fig.savefig(folder / f"{name.replace('/', '_')}.png", dpi=80)
            if boards:
                pixels = figure_to_array(fig)
                for board in boards:
                    board.add_image(f"attention/{name}", pixels, global_step=trainer.global_step, dataformats="HWC")
            plt.close(fig)
        return folder
