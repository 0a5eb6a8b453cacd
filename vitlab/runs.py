"""What evaluate and analyze share: a run's saved config, its checkpoint (weights only) and its module.

A run dir (``paths.output_dir`` of ``vitlab.train``) holds ``checkpoints/*.ckpt`` and the resolved
``config.yaml``; :func:`load_run` finds the config beside a checkpoint, rebuilds the family module
from it and loads the weights with ``torch.load(weights_only=True)``. A checkpoint without a config
beside it needs ``model=<config>`` on the command line. Every failure is one :class:`ConfigError` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError


@dataclass
class LoadedRun:
    """A module rebuilt from a checkpoint, with where it came from."""

    module: Any  # the family LightningModule, in eval mode
    ckpt_path: Path
    run_dir: Path
    config: DictConfig | None  # the run's saved config.yaml, when there is one
    model_name: str


def run_dir_of(ckpt_path: Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; a checkpoint elsewhere -> its own folder."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def read_checkpoint(ckpt_path: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file, loaded weights-only; a missing or unreadable file is a ConfigError."""
    if ckpt_path in (None, ""):
        raise ConfigError("ckpt_path: no value given; add ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {path.resolve()}; give a .ckpt from a run's checkpoints/ folder")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"ckpt_path: {path.resolve()} is not a checkpoint that loads weights-only ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path: {path.resolve()} holds no state_dict; give a checkpoint written by vitlab.train")
    return path, ckpt


def read_run_config(run_dir: Path) -> DictConfig | None:
    saved = run_dir / "config.yaml"
    return OmegaConf.load(saved) if saved.is_file() else None


def load_run(ckpt_path: str | Path | None, model_node: DictConfig | None = None) -> LoadedRun:
    """Rebuild the module of ``ckpt_path`` and load its weights.

    ``model_node`` (a resolved ``model`` config, e.g. from ``model=...`` on the command line) is
    used instead of the run's saved one. The checkpoint must hold weights of that model: its recorded
    network name and every tensor's name and shape must match, or the message says which model it is.
    """
    from vitlab.instantiate import build

    path, ckpt = read_checkpoint(ckpt_path)
    run_dir = run_dir_of(path)
    config = read_run_config(run_dir)
    if model_node is None:
        if config is None:
            raise ConfigError(
                f"ckpt_path: no config.yaml in {run_dir.resolve()} (the checkpoint's run dir); "
                "give model=<the run's model config> on the command line"
            )
        model_node = config.model
    saved_hparams = ckpt.get("hyper_parameters") or {}
    saved_net = (saved_hparams.get("net") or {}).get("name")
    wanted = model_node.net.name
    if saved_net and saved_net != wanted:
        raise ConfigError(
            f"ckpt_path: {path.resolve()} holds weights of {saved_net}, not of model {wanted}; "
            f"use model={saved_net} or the checkpoint of a {wanted} run"
        )
    recipe = OmegaConf.to_container(config.recipe, resolve=True) if config is not None else saved_hparams.get("recipe")
    node = OmegaConf.merge(model_node, {"compile": False})
    module = build(node, recipe=recipe)
    missing, unexpected = _key_mismatch(module.state_dict(), ckpt["state_dict"])
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ConfigError(
            f"ckpt_path: the weights in {path.resolve()} do not fit model {wanted} ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected or of another shape, e.g. {first}); is it a checkpoint of another model?"
        )
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return LoadedRun(module=module, ckpt_path=path, run_dir=run_dir, config=config, model_name=wanted)


def _key_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected or tuple(given[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected


def prepare_output_dir(path: Path, names: list[str], overwrite: bool) -> Path:
    """``path`` created; if it already holds one of ``names`` and ``overwrite`` is off, a ConfigError:
    results already written are never replaced silently."""
    path.mkdir(parents=True, exist_ok=True)
    present = [n for n in names if (path / n).exists()]
    if present and not overwrite:
        raise ConfigError(
            f"out_dir: {path.resolve()} already holds {present[0]}; give another out_dir=<folder> or overwrite=true"
        )
    return path


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
