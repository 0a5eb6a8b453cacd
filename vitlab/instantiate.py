"""Building objects from config nodes, shared by every entry point (train, evaluate, analyze) and
``vitlab.runs``; it imports no entry point."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from vitlab.compat import upgrade_model_node
from vitlab.errors import VitlabError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain containers; bad input raised by the target comes out as
    itself instead of wrapped in Hydra's InstantiationException (so it stays one line)."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, VitlabError):
            raise err.__cause__ from None
        raise


def build_module(node: DictConfig, **kwargs: Any) -> Any:
    """The family LightningModule of a ``model`` node (a retired family name read as today's,
    :mod:`vitlab.compat`). Its ``net`` settings reach the module as plain values: a ``_target_``
    inside them (an attention layer's class) is the network's to build, not Hydra's, so nothing below
    the module is instantiated here."""
    return build(upgrade_model_node(node), _recursive_=False, **kwargs)
