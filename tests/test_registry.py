"""The registry is the one place a named size is defined; conf/model names it and repeats nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vitlab.errors import ConfigError
from vitlab.models import create_model, get_model_config, list_models
from vitlab.models._registry import net_node

CONF_MODEL = Path(__file__).resolve().parent.parent / "vitlab" / "conf" / "model"
# filled from the data config
DATA_KEYS = {"num_classes", "img_size", "attention.entropy_mean", "attention.entropy_std"}


def _leaves(node: dict, prefix: str = "") -> set[str]:
    return {leaf for k, v in node.items()
            for leaf in (_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"})}


def test_registry_names_are_the_conf_model_names():
    assert {p.stem for p in CONF_MODEL.glob("*.yaml")} == set(list_models())


@pytest.mark.parametrize("path", sorted(CONF_MODEL.glob("*.yaml")), ids=lambda p: p.stem)
def test_conf_model_names_its_entry_and_repeats_no_value(path: Path):
    node = yaml.safe_load(path.read_text())
    assert f"/net@net: {path.stem}" in [d if isinstance(d, str) else next(f"{k}: {v}" for k, v in d.items())
                                        for d in node["defaults"]]
    keys = _leaves(node["net"])
    assert keys <= DATA_KEYS, f"{path.name} repeats registry values: {keys - DATA_KEYS}"


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
