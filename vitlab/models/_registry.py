"""A registry of named networks: ``create_model("mini_vit", num_classes=100)``.

Each entrypoint is a small function registered with :func:`register_model` that fixes a size and
passes the caller's overrides on. Overrides are checked against the network's constructor, so a typo
in a config (``model.net.emed_dim``) is reported by name instead of as a TypeError deep in a build.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from vitlab.errors import ConfigError

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    if fn.__name__ in _ENTRYPOINTS:
        raise RuntimeError(f"model {fn.__name__!r} is registered twice")
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered networks that match a shell-style pattern."""
    return sorted(name for name in _ENTRYPOINTS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` with its default size, updated by ``kwargs``."""
    if name not in _ENTRYPOINTS:
        raise ConfigError(f"model.net.name: unknown network {name!r}; choose one of: {', '.join(list_models())}")
    return _ENTRYPOINTS[name](**kwargs)


def build(cls: type[nn.Module], arch: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """Instantiate ``cls`` with ``arch`` updated by ``overrides``, naming any unknown or bad key."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ConfigError(
            f"model.net.{unknown[0]}: {cls.__name__} has no such setting; valid settings are: {', '.join(sorted(accepted))}"
        )
    try:
        return cls(**{**arch, **overrides})
    except ValueError as err:
        raise ConfigError(f"model.net: {err}") from None
