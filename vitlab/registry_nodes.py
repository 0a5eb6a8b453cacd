"""The model registry's Hydra nodes (``net/<name>``, ``model/<name>``) without importing the networks.

Composing a config needs every ``model=`` option, and those come from the registry, which imports
torch and timm (seconds). A command line that is refused, or ``--help``, needs none of that, so the
nodes the registry gives are kept in vitlab's cache folder under a key made of vitlab's own sources:
any edit of a network, a layer or a model file gives a new key, and the first command after it
reads the registry again. A process that has already imported the registry (a run, a test, a
user's own ``register_model``) stores the live nodes instead, so what it registered is included.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from vitlab.utils import cache_dir

__all__ = ["model_options", "registry_nodes", "sources_key", "store_registry_nodes"]

PACKAGE = Path(__file__).resolve().parent
_REGISTRY = "vitlab.models._registry"


def sources_key(package: Path = PACKAGE) -> str:
    """A digest of what the registry's nodes are made from: every Python file of the package (the
    networks, their layers and plug-ins, the config derivation) and the names of the model files."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    for path in sorted((package / "conf" / "model").glob("*.yaml")):
        digest.update(path.name.encode())
    return digest.hexdigest()[:20]


def _live_nodes() -> dict[str, dict[str, Any]]:
    from vitlab.models._registry import registry_nodes as live

    return live()


def _read(path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        nodes = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return nodes if isinstance(nodes, dict) and set(nodes) == {"net", "model"} else None


def _write(path: Path, nodes: dict[str, dict[str, Any]]) -> None:
    """Atomically, and not at all where the cache folder cannot be written (the nodes are then read
    from the registry each time, which is only slower)."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            temporary = Path(f.name)
            json.dump(nodes, f)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            temporary.unlink(missing_ok=True)  # a full disk leaves no half-written file behind


def registry_nodes() -> dict[str, dict[str, Any]]:
    """``{"net": {name: node}, "model": {name: node}}``: live when the registry is imported, else
    from the cache (filled from the registry when its key is new)."""
    if _REGISTRY in sys.modules:
        return _live_nodes()
    path = cache_dir() / f"registry-{sources_key()}.json"
    nodes = _read(path)
    if nodes is None:
        nodes = _live_nodes()
        _write(path, nodes)
    return nodes


def model_options() -> list[str]:
    """Every ``model=`` option: the registry's entries with a family, and the model files."""
    files = {p.stem for p in (PACKAGE / "conf" / "model").glob("*.yaml")}
    return sorted(set(registry_nodes()["model"]) | files)


def store_registry_nodes() -> None:
    """Store every registered network as ``net/<name>`` and, where it has a family and no model file,
    ``model/<name>`` in Hydra's ConfigStore.

    A node with a ``_target_`` (an attention layer) is a plug-in: its keys are the chosen class's
    options, so it is open (``model.net.attention.window=3`` for a class that takes ``window``) and
    the class checks them when the network is built."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig, OmegaConf

    store = ConfigStore.instance()
    nodes = registry_nodes()
    for name, plain in nodes["net"].items():
        node = OmegaConf.create(plain)
        for value in node.values():
            if isinstance(value, DictConfig) and "_target_" in value:
                OmegaConf.set_struct(value, False)
        store.store(group="net", name=name, node=node)
    for name, plain in nodes["model"].items():
        store.store(group="model", name=name, node=plain)
