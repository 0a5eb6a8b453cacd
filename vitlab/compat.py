"""What older run folders hold, read as today's: one place for every rename a saved run may carry.

A run folder keeps its ``config.yaml``, its command-line overrides (``.hydra/``) and checkpoints with
the network's settings. When a key or a class is renamed, its old spelling is mapped here, and the
code that reads a run folder (:func:`vitlab.instantiate.build_module`, the registry's
``create_model``, :func:`vitlab.runs.read_run_config`, ``vitlab-train run_dir=``) passes it through
these maps, so an old run still loads, evaluates and resumes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, open_dict

#: LightningModule names that older ``config.yaml`` files target, and the class that trains their
#: family.
RETIRED_TARGETS = {
    f"vitlab.families{module}.{name}": "vitlab.families.ImageClassifier"
    for name, modules in {"ViTClassifier": ("", ".vit"), "MiniViTClassifier": ("", ".mini_vit"),
                          "OutGridClassifier": ("", ".outgrid")}.items()
    for module in modules
}


def upgrade_model_node(node: DictConfig) -> DictConfig:
    """A ``model`` node with a retired ``_target_`` (:data:`RETIRED_TARGETS`) targeting today's class."""
    target = node.get("_target_")
    if target in RETIRED_TARGETS:
        node = node.copy()
        with open_dict(node):
            node._target_ = RETIRED_TARGETS[target]
    return node


#: The ViT settings of run folders written before the attention, position and block nodes: flat key ->
#: (node, key in the node). ``ape``, ``sincos_pe`` and ``cls_init`` become values rather than keys.
FLAT_VIT_SETTINGS = {
    "attention": ("attention", "_target_"), "qkv_bias": ("attention", "qkv_bias"),
    "proj_bias": ("attention", "proj_bias"), "attn_drop_rate": ("attention", "attn_drop"),
    "rope": ("attention", "rope"), "rope_theta": ("attention", "rope_theta"), "legacy_init": ("attention", "seed_init"),
    "diff_boundary": ("attention", "boundary"), "suppression_mode": ("attention", "mode"),
    "suppression_radius": ("attention", "radius"), "lambda_mode": ("attention", "lambda_mode"),
    "entropy_source": ("attention", "entropy_source"), "entropy_mean": ("attention", "entropy_mean"),
    "entropy_std": ("attention", "entropy_std"), "alibi_distance": ("attention", "distance"),
    "pe_drop_rate": ("position", "table_drop"), "pos_drop_rate": ("position", "token_drop"),
    "cpe": ("position", "cpe"), "cpe_after": ("position", "cpe_after"),
    "cpe_kernel_size": ("position", "cpe_kernel_size"), "cpe_zero_init": ("position", "cpe_zero_init"),
    "mlp_ratio": ("block", "mlp_ratio"), "mlp_bias": ("block", "mlp_bias"), "norm_eps": ("block", "norm_eps"),
}


def upgrade_position_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """A ``position`` node of the form run folders held before position encodings were classes
    (``table: learned | sincos | none`` beside ``table_drop``, ``token_drop`` and the ``cpe`` options) in
    today's form: ``table`` is the ``_target_`` (over a ``_target_`` it was merged into, as an older
    ``model.net.position.table=none`` override on today's node), and a node with neither meant the
    learned table. Today's nodes pass unchanged."""
    node = dict(node)
    if "table" in node:
        node["_target_"] = node.pop("table")
    node.setdefault("_target_", "learned")
    return node


def upgrade_flat_vit_settings(cfg: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of the flat form older run folders hold (``attention: suppress``, ``rope: mixed``,
    ``ape: false``, ...) as overrides of ``cfg`` (a ``ViTConfig``) in the form ``ViT`` takes, and an
    older ``position`` node as today's (:func:`upgrade_position_node`); settings already in that form
    pass unchanged. A flat attention option the chosen layer does not take is dropped: a saved flat
    config held every option of every variant, and the network ignored the others."""
    settings = dict(settings)
    if isinstance(settings.get("position"), Mapping):
        settings["position"] = upgrade_position_node(settings["position"])
    flat = {k for k, v in settings.items()
            if (k in FLAT_VIT_SETTINGS and (k != "attention" or isinstance(v, str))) or k in ("ape", "sincos_pe", "cls_init")}
    if not flat:
        return settings
    out = {k: v for k, v in settings.items() if k not in flat}
    from vitlab.layers.vit_attention import attention_config

    base = attention_config(settings.get("attention", cfg.attention))
    nodes = {"attention": {f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
             "position": dataclasses.asdict(cfg.position), "block": dataclasses.asdict(cfg.block)}
    for key in flat & set(FLAT_VIT_SETTINGS):
        node, name = FLAT_VIT_SETTINGS[key]
        nodes[node][name] = settings[key]
    if "ape" in flat or "sincos_pe" in flat:
        table = "sincos" if settings.get("sincos_pe") else "learned" if settings.get("ape", True) else "none"
        nodes["position"]["_target_"] = table
    if settings.get("init", cfg.init) == "torch" and settings.get("cls_init") == "trunc_normal":
        out["init"] = "torch_cls_trunc_normal"
    base_options = {f.name for f in dataclasses.fields(base)}
    out["attention"] = {k: v for k, v in nodes["attention"].items() if k in base_options}
    out["position"], out["block"] = nodes["position"], nodes["block"]
    return out


#: Keys that older run folders hold under another node, as typed on the command line: old -> today's.
MOVED_KEYS = {
    # ImageNet-100's crop is the recipe's train augmentation, where every other one is.
    "data.random_resized_crop": "recipe.augment.random_resized_crop",
}


def upgrade_override(override: str) -> str:
    """A command-line override of an older run folder as today's: a moved key (:data:`MOVED_KEYS`,
    ``data.random_resized_crop=[0.5,1]`` -> ``recipe.augment.random_resized_crop=[0.5,1]``) or a flat
    ViT key (``model.net.rope_theta=50``, ``model.net.attention=suppress``, ``model.net.ape=false``)
    under today's name; others unchanged."""
    key, sep, value = override.partition("=")
    bare = key.lstrip("+~")
    if bare in MOVED_KEYS:
        lead = key[: len(key) - len(bare)]
        lead = "" if lead == "+" else lead  # the key exists in today's schema: a plain override
        return f"{lead}{MOVED_KEYS[bare]}{sep}{value}"
    return _upgrade_flat_vit_override(override)


def upgrade_run_config(config: DictConfig) -> DictConfig:
    """An older run folder's resolved ``config.yaml`` as today's: ``data.random_resized_crop`` (the
    crop ImageNet-100 applied when the recipe set none) becomes the recipe's
    ``augment.random_resized_crop``, in the recipe and in the data's copy of it."""
    data = config.get("data")
    if not isinstance(data, DictConfig) or "random_resized_crop" not in data:
        return config
    config = copy.deepcopy(config)
    with open_dict(config):
        crop = config.data.pop("random_resized_crop")
        for node in (config.get("recipe"), config.data):
            augment = node.get("augment") if node is not None else None
            if crop is not None and isinstance(augment, DictConfig) and augment.get("random_resized_crop") is None:
                augment.random_resized_crop = crop
    return config


def _upgrade_flat_vit_override(override: str) -> str:
    key, sep, value = override.partition("=")
    prefix, _, flat = key.lstrip("+").rpartition(".")
    lead = key[: len(key) - len(key.lstrip("+"))]
    if sep and prefix == "model.net.position" and flat == "table":
        return f"{lead}model.net.position._target_={value}"
    if not sep or prefix != "model.net":
        return override
    if flat == "ape":
        return f"{lead}model.net.position._target_={'none' if value.lower() == 'false' else 'learned'}"
    if flat == "sincos_pe" and value.lower() == "true":
        return f"{lead}model.net.position._target_=sincos"
    if flat == "cls_init" and value == "trunc_normal":
        return f"{lead}model.net.init=torch_cls_trunc_normal"
    if flat in FLAT_VIT_SETTINGS:
        node, name = FLAT_VIT_SETTINGS[flat]
        return f"{lead}model.net.{node}.{name}={value}"
    return override


#: Tensors of the ViT family (networks of a ``ViTConfig``) that checkpoints written before position
#: encodings were classes hold under other names: old name (or prefix, ending in ".") -> today's.
VIT_STATE_RENAMES = {"pos_embed": "position.pos_embed", "peg.": "position.peg."}


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state dict with its network's tensors under today's names
    (:data:`VIT_STATE_RENAMES` for a ViT network, named by ``hyper_parameters.net.name``); a
    checkpoint already in today's form, or of another family, is returned as it is."""
    state = checkpoint.get("state_dict")
    name = ((checkpoint.get("hyper_parameters") or {}).get("net") or {}).get("name")
    if not isinstance(state, Mapping) or not isinstance(name, str) or not _is_vit(name):
        return checkpoint
    renamed = {_renamed(key): value for key, value in state.items()}
    if list(renamed) == list(state) or len(renamed) != len(state):
        return checkpoint
    return {**checkpoint, "state_dict": renamed}


def _renamed(key: str) -> str:
    if not key.startswith("net."):
        return key
    rest = key[len("net."):]
    for old, new in VIT_STATE_RENAMES.items():
        if rest == old or (old.endswith(".") and rest.startswith(old)):
            return f"net.{new}{rest[len(old):]}"
    return key


def _is_vit(name: str) -> bool:
    from vitlab.errors import ConfigError
    from vitlab.models import get_model_config

    try:
        return type(get_model_config(name)).__name__ == "ViTConfig"
    except ConfigError:
        return False
