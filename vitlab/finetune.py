"""Fine-tuning from a run: ``init_from=<run folder or .ckpt>`` starts a new run from another run's
weights only (a fresh optimizer and schedule, a new run folder), unlike ``ckpt_path`` / ``run_dir``,
which continue a run (:mod:`vitlab.resume`).

The new network is built from the new run's config, so everything computed from the config (RoPE
and ALiBi tables, sin-cos tables, OutGrid's grids, every non-persistent buffer) follows the new
image size by itself. The old weights reach it through a *source* network: the new run's model
settings at the checkpoint's image size and class count, into which the checkpoint must load
exactly (:func:`vitlab.checkpoint.check_weights_fit`, the head left out). Its position tables are
then resampled to the new grid (:meth:`vitlab.layers.vit_position.ViTPosition.resample`) and every
tensor is copied across; the head comes along only when the class count is the same.

Refused in one line, before the run writes anything: a path that is no checkpoint or run folder,
a checkpoint of another network or missing tensors besides the head, a tensor that changes shape
with the image size and has no resample (a family that cannot change size), and ``init_from``
together with a resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vitlab.checkpoint import check_network_name, check_weights_fit, load_checkpoint
from vitlab.errors import ConfigError
from vitlab.instantiate import build_module
from vitlab.layers.vit_position import ViTPosition
from vitlab.runs import find_checkpoint

__all__ = ["init_from_run", "load_weights_for_fine_tuning"]

KEY = "init_from"
# What a checkpoint whose body does not fit the new run's model settings is told to do.
_SAME_NETWORK = ("a run starts from every tensor of the checkpoint but its head: use the model.net settings of that "
                 "run, and a checkpoint that holds all its tensors")


def init_from_run(cfg: DictConfig, module: nn.Module, ckpt_path: str | None, output_dir: Path) -> str | None:
    """Load the weights ``cfg.init_from`` names into ``module`` (built from ``cfg``); returns the
    checkpoint file they came from, for metrics.json, or None without ``init_from``.

    ``ckpt_path`` is the checkpoint this run continues from, if any: continuing a fine-tuned run
    (its folder's config.yaml records the same ``init_from``) keeps the weights of its own
    checkpoint; any other resume with ``init_from`` is refused."""
    given = _init_from_value(cfg)
    if given is None:
        return None
    if ckpt_path is not None:
        _check_continues_fine_tuned_run(given, output_dir)
        rank_zero_info(f"{KEY}: continuing a fine-tuned run from its own checkpoint ({KEY}={given} started it)")
        return _source_file_if_found(given)
    path = find_checkpoint(given, key=KEY)
    load_weights_for_fine_tuning(path, module, cfg.model)
    return str(path.resolve())


def _init_from_value(cfg: DictConfig) -> str | None:
    """``init_from`` as given. An experiment that needs a run named holds a placeholder in angle
    brackets (``???`` cannot override the null that conf/train.yaml declares: OmegaConf's merge keeps
    the old value): left so, or given as ``???``, it is one line."""
    value = cfg.get(KEY)  # None when missing
    if OmegaConf.is_missing(cfg, KEY) or _is_placeholder(value):
        asked = f" (the config asks for {value})" if value else ""
        raise ConfigError(
            f"{KEY}: no value given; add {KEY}=<run folder or .ckpt>, the run whose weights to start from{asked}"
        )
    return None if value in (None, "") else str(value)


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")


def _check_continues_fine_tuned_run(given: str, output_dir: Path) -> None:
    """A resume keeps ``init_from`` only when it continues the run that ``init_from`` started."""
    saved = output_dir / "config.yaml"
    recorded = OmegaConf.load(saved).get(KEY) if saved.is_file() else None
    if recorded is None or str(recorded) != given:
        raise ConfigError(
            f"{KEY}: starts a new run from another run's weights and cannot go with a resume (ckpt_path, run_dir, or a "
            f"run folder that already holds checkpoints/last.ckpt); drop {KEY} to continue the run, or drop the resume "
            "to fine-tune in a new run folder"
        )


def _source_file_if_found(given: str) -> str:
    """The checkpoint file ``init_from`` names today, else the value as given (the source run is gone)."""
    try:
        return str(find_checkpoint(given, key=KEY).resolve())
    except ConfigError:
        return given


def load_weights_for_fine_tuning(path: str | Path, module: nn.Module, model_node: DictConfig) -> None:
    """Copy the weights of the checkpoint at ``path`` into ``module`` (a family module built from
    ``model_node`` at its own image size and class count), as the module docstring says."""
    checkpoint = load_checkpoint(path, KEY)
    source, old_head = _source_module(checkpoint, model_node, path)
    head = old_head | _head_names(module)
    body = {name: tensor for name, tensor in checkpoint["state_dict"].items() if name not in head}
    check_weights_fit({**checkpoint, "state_dict": body}, source, path, KEY, fix=_SAME_NETWORK)
    source.load_state_dict(body)
    rank_zero_info(f"{KEY}: weights of {_net_setting(source, 'name')} from {path}")
    _resample_positions(source.net, module.net)
    _check_body_follows_size(source, module, head, path)
    module.load_state_dict(source.state_dict(), strict=False)
    _load_or_renew_head(checkpoint["state_dict"], module, head)


def _net_setting(module: nn.Module, key: str) -> Any:
    return ((getattr(module, "hparams", None) or {}).get("net") or {}).get(key)


def _source_module(checkpoint: dict[str, Any], model_node: DictConfig, path: str | Path) -> tuple[nn.Module, set[str]]:
    """The new run's model at the checkpoint's image size and class count, without a head, and the
    state-dict names its head had: the network the checkpoint's body must load into exactly."""
    node = OmegaConf.to_container(model_node, resolve=True)
    check_network_name(checkpoint, node["net"]["name"], path, KEY)  # before building a network that cannot fit
    saved = (checkpoint.get("hyper_parameters") or {}).get("net") or {}
    node["net"].update({k: saved[k] for k in ("img_size", "num_classes") if k in saved})
    node.update(compile=False, grad_checkpointing=False)
    try:
        source = build_module(OmegaConf.create(node))
    except ConfigError as err:
        raise ConfigError(
            f"{KEY}: {path} was trained at img_size {saved.get('img_size')} with {saved.get('num_classes')} classes, "
            f"which this run's model.net settings do not build ({err}); use the model.net settings of that run"
        ) from None
    old_head = _head_names(source)
    source.net.reset_classifier(0)
    return source, old_head


def _head_names(module: nn.Module) -> set[str]:
    """The state-dict names of the module's classifier head (``net.head.weight``, ...)."""
    classifier = module.net.get_classifier()
    prefix = next(name for name, part in module.named_modules() if part is classifier)
    return {f"{prefix}.{name}" for name in classifier.state_dict()}


def _resample_positions(source: nn.Module, target: nn.Module) -> None:
    """Each position table of ``source`` made for the grid of its counterpart in ``target``."""
    targets = dict(target.named_modules())
    for name, position in source.named_modules():
        wanted = targets.get(name)
        if not (isinstance(position, ViTPosition) and isinstance(wanted, ViTPosition)):
            continue
        old_grid, new_grid = position.table_grid, wanted.table_grid
        if old_grid is not None and new_grid is not None and tuple(old_grid) != tuple(new_grid):
            position.resample(new_grid)
            rank_zero_info(f"{KEY}: position table net.{name} resampled from the {old_grid[0]}x{old_grid[1]} "
                           f"patch grid to {new_grid[0]}x{new_grid[1]} patches")


def _check_body_follows_size(source: nn.Module, module: nn.Module, head: set[str], path: str | Path) -> None:
    """Refuse a tensor that still differs after resampling: it is sized for the old image and the
    family has no resample for it."""
    old, new = source.state_dict(), module.state_dict()
    for name in [*old, *(n for n in new if n not in old and n not in head)]:
        there = list(old[name].shape) if name in old else "absent"
        here = list(new[name].shape) if name in new else "absent"
        if there == here:
            continue
        img_size = _net_setting(source, "img_size")
        raise ConfigError(
            f"{KEY}: {_net_setting(module, 'name')} cannot be fine-tuned at another image size (img_size {img_size} in "
            f"{path}, {_net_setting(module, 'img_size')} here): {name} is {there} there but {here} here and has no "
            f"resample; fine-tune at data.img_size={img_size}, or drop {KEY} to train from scratch"
        )


def _load_or_renew_head(saved: dict[str, Any], module: nn.Module, head: set[str]) -> None:
    """The checkpoint's head when it fits (the same classes), else the module's fresh one, said in one line."""
    wanted = {name: tensor for name, tensor in module.state_dict().items() if name in head}
    if wanted and all(name in saved and saved[name].shape == tensor.shape for name, tensor in wanted.items()):
        module.load_state_dict({name: saved[name] for name in wanted}, strict=False)
        return
    old = next((saved[name].shape[0] for name in sorted(head) if name in saved and saved[name].dim() == 2), None)
    rank_zero_info(f"{KEY}: a new head for {module.num_classes} classes, initialised afresh "
                   f"(the checkpoint's head is for {old if old is not None else 'no'} classes)")
