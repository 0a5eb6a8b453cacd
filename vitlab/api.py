"""vitlab from Python or a notebook: compose a config, build its parts, load a finished run.

    import lightning as L
    import vitlab

    cfg = vitlab.compose("data=synthetic", "model=mini_vit", "hardware=cpu", output_dir="runs/nb")
    module, datamodule = vitlab.build_module(cfg), vitlab.build_datamodule(cfg)
    L.Trainer(max_steps=10, logger=False).fit(module, datamodule=datamodule)

    run = vitlab.load_run("logs/train/runs/2026-01-01_12-00-00")   # or a .ckpt file
    logits = run.module(run.transform(image).unsqueeze(0))

docs/python.md walks through it. Everything here reuses what the command-line entry points use
(the same config tree, the same builders, the same checkpoint loader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab.config import register_configs, split_batch, to_hardware, to_recipe
from vitlab.errors import ConfigError
from vitlab.inference import inference_network

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose(*overrides: str, config_name: str = "train", output_dir: str | Path | None = None) -> DictConfig:
    """The config ``vitlab-<config_name> <overrides>`` would run, composed with Hydra's compose API.

    Outside a Hydra run there is no run folder, so ``paths.output_dir`` is ``output_dir`` (default:
    ``outputs/api`` under the current folder). Overrides are the command line's: ``"data=synthetic"``,
    ``"recipe.epochs=3"``, ``"data.subset=100"``.
    """
    from vitlab.cli import check_group_choices, compose_or_refuse

    register_configs()
    check_group_choices(list(overrides), CONF_DIR)
    cfg = compose_or_refuse(CONF_DIR, config_name, overrides)  # the command line's one line, as a ConfigError
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir if output_dir is not None else Path("outputs") / "api")
    return cfg


def build_module(cfg: DictConfig) -> Any:
    """The family LightningModule of ``cfg.model``, with the optimizer and schedule of ``cfg.recipe``."""
    from vitlab.instantiate import build_module

    return build_module(cfg.model, recipe=OmegaConf.to_container(cfg.recipe, resolve=True))


def build_datamodule(cfg: DictConfig) -> Any:
    """The LightningDataModule of ``cfg.data``, with the per-device batch the recipe and hardware give."""
    from vitlab.instantiate import build

    batch_per_device, _ = split_batch(to_recipe(cfg.recipe), to_hardware(cfg.hardware))
    return build(cfg.data, batch_size=batch_per_device)


@dataclass
class Run:
    """A finished run, ready for inference."""

    module: Any  # the family LightningModule, eval mode, on CPU; call it on normalised image batches
    transform: Any  # the run's eval transform: PIL image or uint8 CHW tensor -> normalised float CHW
    config: DictConfig  # the run's resolved config.yaml
    classes: list[str]  # class names in label order (indices as text when the data does not name them)
    ckpt_path: Path
    _network: tuple[str, Any] | None = field(default=None, repr=False, compare=False)  # (mode, what predict calls)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5, inference: str = "eager") -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k probabilities, top-k class indices) for a batch of transformed images; ``inference``
        as ``hardware.inference`` (:mod:`vitlab.inference`; the fast copy is made once and kept)."""
        if self._network is None or self._network[0] != inference:
            self._network = (inference, inference_network(self.module, inference))
        probs = self._network[1](images).float().softmax(dim=-1)
        return probs.topk(min(k, probs.shape[-1]), dim=-1)


def load_run(path: str | Path) -> Run:
    """Load a run folder (its best checkpoint) or a checkpoint file, with the eval transform and class
    names of the run's own data config (``config.yaml`` beside ``checkpoints/``)."""
    from vitlab.runs import find_checkpoint
    from vitlab.runs import load_run as load_checkpoint_run

    loaded = load_checkpoint_run(find_checkpoint(path))
    if loaded.config is None:
        raise ConfigError(f"run: no config.yaml in {loaded.run_dir.resolve()}; load_run needs the run's saved config")
    return Run(
        module=loaded.module,
        transform=eval_transform(loaded.config.data),
        config=loaded.config,
        classes=class_names(loaded.config.data),
        ckpt_path=loaded.ckpt_path,
    )


def eval_transform(data: DictConfig) -> Any:
    """The run's evaluation transform for images of any size: its DataModule's own
    (:meth:`vitlab.datamodules.base.ImageDataModule.eval_transform`), built from the data config alone."""
    from hydra.utils import get_class

    datamodule = get_class(data._target_)
    return datamodule.eval_transform(int(data.img_size), list(data.mean), list(data.std), None,
                                     data.get("resize_interpolation"))


def class_names(data: DictConfig) -> list[str]:
    """The class names the run's DataModule gives without loading its images (CIFAR's meta file, the
    synthetic shapes, an image folder's sorted class folders), or ``"0"``, ``"1"``... when the data is
    not on this machine or has no names."""
    from vitlab.instantiate import build

    names = None
    try:
        datamodule = build(OmegaConf.merge(data, {"download": False} if "download" in data else {}), batch_size=1)
        names = getattr(datamodule, "classes", None)
        if names is None and "root" in data and "train_dir" in data:  # ImageFolder order: sorted folder names
            names = sorted(p.name for p in (Path(data.root) / data.train_dir).iterdir() if p.is_dir())
    except Exception:  # noqa: BLE001 - data not on this machine: fall back to the label indices
        names = None
    if not names or len(names) != int(data.num_classes):
        return [str(i) for i in range(int(data.num_classes))]
    return [str(n) for n in names]


def load_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder contributes its images, sorted, recursively)."""
    from vitlab.datamodules.images import is_image_file

    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.is_file():
            found.append(item)
        else:
            raise ConfigError(f"images: no file or folder at {item.resolve()}")
    if not found:
        raise ConfigError(f"images: no image files in {', '.join(map(str, paths))}")
    return found
