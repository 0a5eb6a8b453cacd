"""``python -m vitlab.train``: fit a model on a dataset with a recipe and hardware profile, then test.

    python -m vitlab.train model=mini_vit data=cifar10
    python -m vitlab.train experiment=cifar10_mini_vit hardware=rtx3060_6gb
    python -m vitlab.train run_dir=logs/train/runs/<date>_<time>        # continue a run where it stopped

The run dir (``paths.output_dir``) receives ``checkpoints/`` (best by val top-1, and last),
``tensorboard/``, the resolved ``config.yaml`` and, after testing, ``metrics.json``. Under
``protocol=heldout`` (the default) the best checkpoint is tested; under ``protocol=seed`` (each
original's own protocol, docs/seeds/) the final weights, beside the best of the test scores of fit
(vitlab/training.py, :func:`vitlab.training.train`, the task itself, usable without the command
line). This module is the command: it imports no torch until a run starts, so a refused command line
or ``--help`` answers at once.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from vitlab.cli import (
    check_group_choices,
    check_overrides_compose,
    check_template_groups,
    composition_error,
    lightning_lines_once,
    one_line_errors,
    print_help,
    print_resolved_config,
    run_entry_point,
    sweep_folders_name_what_varies,
    warn_unknown_groups,
)
from vitlab.config import to_hardware
from vitlab.errors import ConfigError, VitlabError
from vitlab.resume import (
    check_run_dir_exists,
    ckpt_path_continues_its_run,
    continued_run_config,
    forget_refused_resume,
    forget_resume_subdirs,
)
from vitlab.runs import check_folder_can_be_made


# An absolute path: from a console script Hydra would look for a `vitlab.conf` Python module instead.
CONF_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # torch, Lightning and the data stack load here, once the command line has composed
    from vitlab.callbacks.checkpoint import Preempted
    from vitlab.training import train

    lightning_lines_once()

    resumed = bool(cfg.run_dir)
    with one_line_errors():
        try:
            if cfg.run_dir:
                try:
                    cfg, choices = continued_run_config(cfg.run_dir, list(HydraConfig.get().overrides.task))
                except (ConfigCompositionException, MissingConfigException) as err:
                    raise composition_error(err, list(HydraConfig.get().overrides.task), CONF_DIR) from None
            else:
                choices = dict(HydraConfig.get().runtime.choices)
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                check_sweep_can_use_ddp(cfg)
            metrics = train(cfg, choices)
        except (VitlabError, MissingMandatoryValue, InterpolationResolutionError):
            _forget_refused_invocation(resumed)
            raise
        except Preempted as preempted:
            print(preempted, file=sys.stderr)
            sys.exit(preempted.exit_code)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


def _forget_refused_invocation(resumed: bool) -> None:
    """What Hydra wrote for a run that was then refused: a fresh run folder holding nothing else is
    removed, and so is a refused resume's .hydra/resume_<time>/ (its overrides must not be replayed)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if resumed:
        forget_refused_resume(run_dir)
        return
    # Hydra's record of the command, the config the run saved, and the loggers' files of a run that was
    # refused during fit before it saved a checkpoint.
    nothing_of_value = {".hydra", f"{hydra_cfg.job.name}.log", "config.yaml", "tensorboard", "csv", "wandb", "mlruns"}
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return
    fresh = all(p.stat().st_mtime >= _command_started - 1 for p in entries)
    only_leftovers = all(p.name in nothing_of_value or (p.is_dir() and not any(p.iterdir())) for p in entries)
    if entries and fresh and only_leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


# When this command started (set by main): a folder whose every entry is older is not this command's.
_command_started = 0.0


def check_sweep_can_use_ddp(cfg: DictConfig) -> None:
    """Refuse a local sweep of multi-process runs. Lightning's DDP launcher starts the other ranks by
    re-running the command line, which in a sweep (-m) re-runs the whole sweep in every rank. Under
    SLURM (hydra/launcher=slurm) or torchrun the ranks come from the job instead, which works."""
    hardware = to_hardware(cfg.hardware)
    launched_outside = any(k in os.environ for k in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if hardware.devices > 1 and hardware.strategy.startswith("ddp") and not launched_outside:
        raise ConfigError(
            f"hardware.strategy: {hardware.strategy} over {hardware.devices} devices cannot run inside a local sweep (-m): "
            "Lightning would re-run the whole sweep in every rank; sweep on SLURM (hydra/launcher=slurm) or "
            "start each run on its own"
        )


def check_log_dir_writable(argv: list[str]) -> None:
    """The run folder can be created where it will go: the folder named by ``paths.output_dir`` or
    ``hydra.run.dir``, else a new folder under ``run_dir`` or ``paths.log_dir``. Checked before Hydra
    tries to create it (its failure is a long traceback), by creating and removing a folder there."""
    values = dict(arg.lstrip("+").split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))
    if "hydra.sweep.dir" in values or {"-m", "--multirun"} & set(argv):
        return
    for key in ("paths.output_dir", "hydra.run.dir", "run_dir", "paths.log_dir"):
        if values.get(key) not in (None, "", "null"):
            break
    else:
        key, values["paths.log_dir"] = "paths.log_dir", os.environ.get("VITLAB_LOG_DIR", "logs")
    if "${" in values[key]:
        return  # an interpolation: Hydra resolves it
    target = Path(values[key].strip("'\""))
    check_folder_can_be_made(target, key, folder_itself=key in ("paths.output_dir", "hydra.run.dir"))


def run_folder_follows_output_dir(argv: list[str]) -> list[str]:
    """``paths.output_dir=<folder>`` makes that folder the run folder, Hydra's record (``.hydra/``)
    and log included, so that ``run_dir=<folder>`` continues it."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.output_dir=")]
    multirun = {"-m", "--multirun"} & set(argv)
    if not given or multirun or any(a.lstrip("+").startswith("hydra.run.dir=") for a in argv):
        return argv
    # Beside the override it follows, not at the end: Hydra's parser takes the overrides as one run of
    # words, and one after a flag (`--cfg job`) would be refused.
    last = max(i for i, a in enumerate(argv) if a.lstrip("+").startswith("paths.output_dir="))
    return [*argv[: last + 1], f"hydra.run.dir={given[-1]}", *argv[last + 1 :]]


def main() -> None:
    global _command_started
    _command_started = time.time()
    forget_resume_subdirs()
    argv = ckpt_path_continues_its_run(run_folder_follows_output_dir(sys.argv[1:]))
    sys.argv[1:] = sweep_folders_name_what_varies(argv, CONF_DIR)
    run_entry_point(
        _hydra_main,
        partial(print_help, conf_dir=CONF_DIR, config_name="train"),
        partial(print_resolved_config, conf_dir=CONF_DIR, config_name="train"),
        check_run_dir_exists,
        check_log_dir_writable,
        partial(check_template_groups, conf_dir=CONF_DIR),
        partial(check_group_choices, conf_dir=CONF_DIR),
        partial(warn_unknown_groups, conf_dir=CONF_DIR),
        partial(check_overrides_compose, conf_dir=CONF_DIR, config_name="train"),
    )


if __name__ == "__main__":
    main()
