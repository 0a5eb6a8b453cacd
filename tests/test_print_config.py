"""`--cfg hydra --resolve` prints a resolved config (and claims no run folder); a run that
would go on past its LR schedule is refused."""

from __future__ import annotations

import pytest
import yaml

from conftest import CONF_DIR
from vitlab.cli import print_resolved_config
from vitlab.errors import ConfigError
from vitlab.training import check_within_schedule


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


def test_max_epochs_past_the_recipe_is_refused_in_one_line():
    check_within_schedule(3, 3)
    check_within_schedule(None, 3)
    check_within_schedule(2, 3)
    with pytest.raises(ConfigError) as refused:
        check_within_schedule(5, 3)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("trainer.max_epochs: 5 is past recipe.epochs=3")
    assert "set recipe.epochs=5 to extend the schedule" in message
