"""`--cfg hydra --resolve` prints a resolved config (and claims no run folder); the warning when a
run would go on past its LR schedule."""

from __future__ import annotations

import logging

import pytest
import yaml

from conftest import CONF_DIR
from vitlab.cli import print_resolved_config
from vitlab.train import warn_if_past_schedule


def test_cfg_hydra_resolve_prints_the_run_dir_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from test_config_errors import run_in_process  # python -m vitlab.train, in this process

    monkeypatch.chdir(tmp_path)
    code, stderr = run_in_process(["--cfg", "hydra", "--resolve", f"paths.log_dir={tmp_path / 'logs'}", "task_name=probe"])
    assert code == 0, stderr
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == ["hydra"] and "help" not in printed["hydra"]
    assert printed["hydra"]["run"]["dir"].startswith(f"{tmp_path / 'logs'}/probe/runs/")
    assert printed["hydra"]["job"]["chdir"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run or sweep folder claimed


def test_cfg_all_resolve_names_the_folder_of_a_continued_run(tmp_path, capsys):
    run_dir = tmp_path / "earlier"
    with pytest.raises(SystemExit) as exit_:
        print_resolved_config(["--cfg", "all", "--resolve", f"run_dir={run_dir}", "model=vit"], CONF_DIR, "train")
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["hydra"]["run"]["dir"] == str(run_dir) and printed["model"]["net"]["name"] == "vit"
    assert printed["trainer"]["max_epochs"] == printed["recipe"]["epochs"]  # interpolations resolved
    assert not run_dir.exists()


@pytest.mark.parametrize("argv", [["--cfg", "job"], ["--cfg", "hydra"], ["model=vit"], ["--cfg", "hydra", "--resolve", "-p", "hydra.run"]])
def test_other_commands_are_left_to_hydra(argv):
    assert print_resolved_config(argv, CONF_DIR, "train") is None


def test_max_epochs_past_the_recipe_is_one_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="vitlab.train"):
        warn_if_past_schedule(3, 3)
        warn_if_past_schedule(None, 3)
        assert not caplog.records
        warn_if_past_schedule(5, 3)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert record.getMessage().startswith("trainer.max_epochs=5 is larger than recipe.epochs=3")
    assert "set recipe.epochs=5" in record.getMessage()
