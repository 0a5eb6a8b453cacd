"""The registry of named networks, the one place a named size is defined.

A family has a typed config (a dataclass) and a builder that makes its network from one; a named
size is one config value registered under a name, in the spirit of timm's ``model_cfgs``::

    register_model("outgrid_7m", OutGridConfig(dims=(48, 96, 192, 256), ...), OutGridViT.from_config)
    create_model("outgrid_7m", num_classes=10)        # the config with one field replaced

The registry is also the model config: :func:`registry_nodes` gives each entry's fields as
``net/<name>`` and, with the family's LightningModule and seed recipe (``module``, ``recipe``), the
whole ``model/<name>`` node for Hydra's ConfigStore (vitlab/registry_nodes.py stores them), so
``model=<name>`` needs no file. A ``conf/model/<name>.yaml`` exists only where a network's config adds something (it then names the
entry and repeats none of its values). ``model.net.<field>=...`` overrides any field, and a field the
config does not have is one error line with the nearest name.

:func:`config_dataclass` derives a family's config from its network's constructor, so the
constructor stays the one place the defaults are written.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vitlab.errors import ConfigError, nearest_key_hint

__all__ = ["ModelEntry", "config_dataclass", "create_model", "get_model_config", "list_models", "register_model", "unregister_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A named size: its typed config and the builder that turns a config into the network."""

    name: str
    cfg: Any
    builder: Callable[[Any], nn.Module]
    #: Rewrites settings of an older form into the config's (run folders written before a change
    #: of the config's shape): ``upgrade(cfg, settings) -> settings``.
    upgrade: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    #: The LightningModule that trains it and its seed recipe: with both, ``model=<name>`` is
    #: derived from the entry (:func:`model_node`).
    module: str | None = None
    recipe: str | None = None

    @property
    def family(self) -> str:
        return type(self.cfg).__name__.removesuffix("Config")


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(
    name: str, cfg: Any, builder: Callable[[Any], nn.Module],
    upgrade: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
    module: str | None = None, recipe: str | None = None,
) -> ModelEntry:
    """Register ``cfg`` (a dataclass instance) under ``name``; ``builder(cfg)`` makes the network;
    ``upgrade`` (optional) reads settings of an older form (:attr:`ModelEntry.upgrade`); ``module`` and
    ``recipe`` (the LightningModule's target and the seed recipe) make ``model=<name>`` a config."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"model {name!r}: the config must be a dataclass instance, got {type(cfg).__name__}")
    if name in _ENTRIES:
        raise RuntimeError(f"model {name!r} is registered twice")
    _ENTRIES[name] = entry = ModelEntry(name, cfg, builder, upgrade, module, recipe)
    return entry


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a family registered for a while, e.g. in a test)."""
    _entry(name)
    del _ENTRIES[name]


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered networks that match a shell-style pattern."""
    return sorted(name for name in _ENTRIES if fnmatch.fnmatch(name, pattern))


def _entry(name: str) -> ModelEntry:
    if name not in _ENTRIES and "." in name:
        _register_class(name)
    if name not in _ENTRIES:
        close = difflib.get_close_matches(name, _ENTRIES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"model.net.name: unknown network {name!r}; {hint}choose one of: {', '.join(list_models())}")
    return _ENTRIES[name]


def _register_class(path: str) -> None:
    """A network of the user's own package, named by its dotted class path
    (``model.net.name=mypkg.rownet.RowNet``): registered under that path, its config derived from its
    constructor (:func:`config_dataclass`), trained by ``vitlab.families.ImageClassifier``."""
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model.net.name: cannot import {path} ({err}); give a registered network or the dotted "
                          "path of an nn.Module class on the Python path") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model.net.name: {path} is not an nn.Module class")
    try:
        cfg = config_dataclass(cls, f"{class_name}Config")()
    except TypeError as err:
        raise ConfigError(f"model.net.name: {path} cannot be configured: {err}") from None
    register_model(path, cfg, build_from_config(cls), module="vitlab.families.ImageClassifier")


def get_model_config(name: str, **overrides: Any) -> Any:
    """The registered config of ``name`` with ``overrides`` replaced, each checked against its fields."""
    entry = _entry(name)
    cfg = entry.cfg
    if entry.upgrade is not None:
        overrides = entry.upgrade(cfg, overrides)
    fields = [f.name for f in dataclasses.fields(cfg)]
    for key in overrides:
        if key not in fields:
            hint = nearest_key_hint(key, fields)
            raise ConfigError(f"model.net.{key}: {name} ({type(cfg).__name__}) has no such setting; {hint}")
    cfg = dataclasses.replace(cfg, **overrides)
    _check_sizes(cfg)
    return cfg


#: Config fields that count or measure something in every family (widths, depths, heads, patch and
#: image sizes, ratios): each value, or each entry of a per-stage tuple, is positive. A zero would
#: build a network that fails only at its first forward, deep inside a kernel.
POSITIVE_FIELDS = frozenset({
    "img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "stem_dim", "dims", "depths",
    "outlook_heads", "outlook_mlp_ratio", "kernel_size", "grid_sizes", "window_size", "bank_size", "num_groups",
    "compress_ratio", "bottleneck_ratio", "dilations",
})


def _check_sizes(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if f.name in POSITIVE_FIELDS and any(isinstance(v, int | float) and not isinstance(v, bool) and v <= 0 for v in values):
            raise ConfigError(f"model.net.{f.name}: must be positive, got {value!r}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered network ``name`` with its config updated by ``overrides``."""
    try:
        cfg = get_model_config(name, **overrides)
        return _entry(name).builder(cfg)
    except ValueError as err:
        # A message that starts with the key it is about ("attention.rope: ...") names it in full.
        text = str(err)
        raise ConfigError(f"model.net.{text}" if re.match(r"^[\w.]+: ", text) else f"model.net: {text}") from None


def config_dataclass(cls: type[nn.Module], name: str | None = None) -> type:
    """A frozen dataclass with one typed field per constructor argument of ``cls`` (same defaults)."""
    fields = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(f"{cls.__name__}.{p.name}: a config field needs a default")
        fields.append((p.name, p.annotation, dataclasses.field(default=p.default)))
    config = dataclasses.make_dataclass(name or f"{cls.__name__}Config", fields, frozen=True)
    config.__module__ = cls.__module__
    config.__doc__ = f"The settings of :class:`{cls.__name__}`: one field per constructor argument, same defaults."
    return config


def build_from_config(cls: type[nn.Module]) -> Callable[[Any], nn.Module]:
    """The builder of a network whose constructor takes the config's fields as keyword arguments."""

    def builder(cfg: Any) -> nn.Module:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})

    builder.__name__ = f"build_{cls.__name__}"
    return builder


def net_node(name: str) -> dict[str, Any]:
    """The Hydra node of a registered network: ``name`` plus every field of its config."""
    cfg = _entry(name).cfg

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return list(value) if isinstance(value, tuple) else value

    return {"name": name, **{f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}}


#: Where the model files that add something to a registry entry live.
MODEL_FILES = Path(__file__).resolve().parents[1] / "conf" / "model"


def model_node(name: str) -> dict[str, Any]:
    """The ``model`` config of a registry entry: its net node, the family's LightningModule and seed
    recipe, and the sizes read from the data config."""
    entry = _entry(name)
    return {
        "defaults": [{"/net@net": name}, {"override /recipe@_global_.recipe": entry.recipe}, "_self_"],
        "_target_": entry.module,
        "_recursive_": False,  # net holds the network's settings (an attention layer's _target_ among them)
        "compile": "${hardware.compile}",
        "grad_checkpointing": "${hardware.grad_checkpointing}",
        "net": {"num_classes": "${data.num_classes}", "img_size": "${data.img_size}"},
    }


def registry_nodes() -> dict[str, dict[str, Any]]:
    """What the registry gives Hydra, as plain data: ``net`` (every entry's :func:`net_node`) and
    ``model`` (:func:`model_node` of each entry with a family and no model file).
    :func:`vitlab.registry_nodes.store_registry_nodes` stores them."""
    names = list_models()
    derived = [n for n in names if _ENTRIES[n].module and _ENTRIES[n].recipe and not (MODEL_FILES / f"{n}.yaml").is_file()]
    return {"net": {n: net_node(n) for n in names}, "model": {n: model_node(n) for n in derived}}
