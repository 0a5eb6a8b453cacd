"""The registry is the one place a named size is defined, and the model config: every entry is a
``model=`` option without a file; a conf/model file exists only where it adds something, and then
names its entry and repeats nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vitlab.errors import ConfigError
from vitlab.models import create_model, get_model_config, list_models
from vitlab.models._registry import model_node, net_node
from vitlab.registry_nodes import model_options

CONF_MODEL = Path(__file__).resolve().parent.parent / "vitlab" / "conf" / "model"
# filled from the data config
DATA_KEYS = {"num_classes", "img_size", "attention.entropy_mean", "attention.entropy_std"}


def _leaves(node: dict, prefix: str = "") -> set[str]:
    return {leaf for k, v in node.items()
            for leaf in (_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"})}


def test_every_registry_entry_is_a_model_config():
    assert model_options() == list_models()
    assert {p.stem for p in CONF_MODEL.glob("*.yaml")} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_equals_registry_composes_the_entry_with_its_family_and_recipe(name, tmp_path):
    from conftest import compose_config

    cfg = compose_config([f"model={name}", "data=synthetic"], output_dir=tmp_path)
    assert cfg.model.net.name == name and cfg.model._target_ == model_node(name)["_target_"]
    assert cfg.model._recursive_ is False and cfg.model.net.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("path", sorted(CONF_MODEL.glob("*.yaml")), ids=lambda p: p.stem)
def test_conf_model_names_its_entry_and_repeats_no_value(path: Path):
    node = yaml.safe_load(path.read_text())
    assert f"/net@net: {path.stem}" in [d if isinstance(d, str) else next(f"{k}: {v}" for k, v in d.items())
                                        for d in node["defaults"]]
    keys = _leaves(node["net"])
    assert keys <= DATA_KEYS, f"{path.name} repeats registry values: {keys - DATA_KEYS}"
    body = model_node(path.stem)
    assert keys - set(_leaves(body["net"])), f"{path.name} adds nothing to the registry's model node: remove it"


def test_every_entry_has_a_typed_config_and_a_hydra_node():
    for name in list_models():
        cfg = get_model_config(name)
        assert dataclasses.is_dataclass(cfg)
        node = net_node(name)
        assert node["name"] == name and set(node) - {"name"} == {f.name for f in dataclasses.fields(cfg)}


def test_an_override_replaces_one_field_of_the_named_size():
    base, changed = get_model_config("outgrid_14m"), get_model_config("outgrid_14m", drop_path_rate=0.3)
    assert changed.drop_path_rate == 0.3 and base.drop_path_rate == 0.08
    assert dataclasses.replace(changed, drop_path_rate=0.08) == base


def test_an_unknown_field_is_one_line_with_the_nearest_name():
    with pytest.raises(ConfigError, match=r"^model\.net\.drop_rat: vit \(ViTConfig\) has no such setting; did you mean drop_rate\?$"):
        create_model("vit", drop_rat=0.1)
    with pytest.raises(ConfigError, match=r"^model\.net\.name: unknown network 'vti'; did you mean vit\?"):
        create_model("vti")


def test_an_alias_is_the_same_config():
    assert get_model_config("outgrid") == get_model_config("outgrid_7m")
