"""vitlab.compose gives what docs/python.md promises: the command line's one-line ConfigError."""

import pytest

import vitlab
from vitlab.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("recipe.lr=0.1", "recipe.lr: no such key in the config; did you mean recipe.optimizer.lr?"),
    ("recipe.epochs=many", "recipe.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    ("model=nope", "model=nope: no such model config; choose one of: "),
    ("recipe.epochs=[1,2", "recipe.epochs=[1,2: not a valid override"),
])
def test_a_bad_override_is_one_config_error(override, message):
    with pytest.raises(ConfigError) as refused:
        vitlab.compose("data=synthetic", override)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_good_overrides_compose(tmp_path):
    cfg = vitlab.compose("data=synthetic", "model=mini_vit", "recipe.epochs=3", output_dir=tmp_path)
    assert cfg.recipe.epochs == 3 and cfg.model.net.name == "mini_vit" and cfg.paths.output_dir == str(tmp_path)
