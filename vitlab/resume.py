"""Continuing a run where it stopped: the one place that decides how.

A run continues from its folder (``run_dir=<folder>``), from a checkpoint (``ckpt_path=<file>`` or
``last``), or by itself when a requeued job finds its folder already holding ``last.ckpt``.

Before the run is built:

* :func:`checkpoint_to_continue` picks the checkpoint;
* :func:`continued_run_config` re-composes the run's config from the overrides it recorded
  (``.hydra/overrides.yaml``, then each earlier resume's ``.hydra/resume_<time>/overrides.yaml``)
  followed by today's, and :func:`check_resume_changes` refuses a change the run cannot take
  mid-way (its model shape and data stream);
* :func:`resume_subdir` names, once per command, the Hydra folder this resume writes into.

Inside the training module, after Lightning has restored the optimizer and schedule:
:func:`recipe_settings` snapshots what the recipe configures and :func:`apply_recipe_settings` puts it
back over the restored state, so that a recipe changed on resume takes effect from the next step.
The RNG streams are captured and restored by :mod:`vitlab.checkpoint`.
"""

from __future__ import annotations

import copy
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab.errors import ConfigError

__all__ = [
    "apply_recipe_settings",
    "check_resume_changes",
    "check_run_dir_exists",
    "checkpoint_to_continue",
    "ckpt_path_continues_its_run",
    "continued_run_config",
    "forget_refused_resume",
    "forget_resume_subdirs",
    "recipe_settings",
    "resume_subdir",
]

# Overrides that say where a run is, not what it is: a resume names the folder itself.
_SKIPPED_OVERRIDES = ("run_dir=", "ckpt_path=", "paths.output_dir=")


# ----------------------------------------------------------------------------- the resume's Hydra folder
#: This process's Hydra folder in each run folder it continues, named once: every resolution of the
#: config, and the look-up of what to replay, get the same folder.
_RESUME_SUBDIRS: dict[str, str] = {}


def resume_subdir(run_dir: str | Path) -> str:
    """``.hydra/resume_<time>`` (``_2``, ... if an earlier resume took that second) relative to
    ``run_dir``, the folder where Hydra keeps the overrides of this process's resume of it."""
    key = os.path.abspath(run_dir)
    if key not in _RESUME_SUBDIRS:
        name = candidate = f".hydra/resume_{datetime.now():%Y-%m-%d_%H-%M-%S}"
        suffix = 1
        while (Path(key) / candidate).exists():
            suffix += 1
            candidate = f"{name}_{suffix}"
        _RESUME_SUBDIRS[key] = candidate
    return _RESUME_SUBDIRS[key]


def forget_resume_subdirs() -> None:
    """Start a new command in this process: its resumes name folders of their own (several commands
    run in one process from the Python API and the tests)."""
    _RESUME_SUBDIRS.clear()


def this_resume_subdir(run_dir: Path) -> Path | None:
    """The .hydra/resume_<time>/ that Hydra wrote for this command, if it exists."""
    folder = run_dir / resume_subdir(run_dir)
    return folder if folder.is_dir() else None


def forget_refused_resume(run_dir: Path) -> None:
    """A refused resume leaves no .hydra/resume_<time>/: its overrides must never be replayed."""
    subdir = this_resume_subdir(run_dir)
    if subdir is not None:
        shutil.rmtree(subdir, ignore_errors=True)


# ----------------------------------------------------------------------------- which checkpoint
def checkpoint_to_continue(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint this run continues from, or None for a fresh run.

    ``last`` is the run folder's ``checkpoints/last.ckpt``; a path must name a file. Without
    ``ckpt_path``, a folder that already holds ``last.ckpt`` (a SLURM job requeued after its time
    limit reruns in its sweep folder) is continued instead of overwritten."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in (None, ""):
        if last.is_file():
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"{output_dir} already holds a run: continuing from {last}")
            return str(last)
        return None
    if ckpt_path == "last":
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last: no checkpoint at {last}; give run_dir=<the folder of the run to continue>")
        return str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path: no checkpoint file at {path.resolve()}; give an existing .ckpt file or ckpt_path=last with run_dir=<run folder>"
        )
    return str(path)


def ckpt_path_continues_its_run(argv: list[str]) -> list[str]:
    """``ckpt_path=<run>/checkpoints/<file>.ckpt`` alone continues the run that file belongs to, as
    ``run_dir=<run> ckpt_path=<file>`` does (its recorded config, not today's defaults); a checkpoint
    outside a run folder starts a new run from it."""
    if {"-m", "--multirun"} & set(argv) or any(a.startswith("run_dir=") for a in argv):
        return argv
    given = [a.partition("=")[2].strip("'\"") for a in argv if a.startswith("ckpt_path=")]
    if not given or given[-1] in ("", "null", "last"):
        return argv
    from vitlab.runs import run_dir_of

    path = Path(given[-1])
    run = run_dir_of(path)
    if path.is_file() and (run / ".hydra" / "overrides.yaml").is_file():
        return [*argv, f"run_dir={run}"]
    return argv


def check_run_dir_exists(argv: list[str]) -> None:
    """``run_dir=<folder>`` must name an earlier run's folder that no live run holds; checked before
    Hydra writes anything there."""
    from vitlab.runs import check_not_held

    for arg in argv:
        if not arg.startswith("run_dir="):
            continue
        value = arg.partition("=")[2].strip("'\"")
        if value in ("", "null"):
            continue
        folder = Path(value)
        if not folder.is_dir():
            raise ConfigError(f"run_dir: no folder at {folder.resolve()}; give the folder of an earlier run (logs/<task>/runs/<date>_<time>)")
        if not (folder / ".hydra" / "overrides.yaml").is_file():
            raise ConfigError(
                f"run_dir: {folder.resolve()} holds no .hydra/overrides.yaml, so it is not the folder of a vitlab run; "
                "give the folder of an earlier run (logs/<task>/runs/<date>_<time>)"
            )
        check_not_held(folder.resolve(), "run_dir")


# ----------------------------------------------------------------------------- the run's config
def continued_run_config(run_dir: str | Path, today: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The config of the run in ``run_dir`` (its recorded overrides, then ``today``'s) and its group
    choices. Called inside Hydra's context (the train config's search path)."""
    import hydra

    run_dir = Path(run_dir)
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"run_dir: {run_dir.resolve()} holds no .hydra/overrides.yaml; give the folder of an earlier vitlab run")
    earlier, before = _earlier_config(run_dir, [o for o in override_history(run_dir) if not o.startswith(_SKIPPED_OVERRIDES)])
    check_saved_config(run_dir, before)
    composed = hydra.compose(config_name="train", overrides=earlier + today, return_hydra_config=True)
    choices = dict(composed.hydra.runtime.choices)
    with open_dict(composed):
        del composed["hydra"]
    if any(not o.startswith(_SKIPPED_OVERRIDES) for o in today):
        check_resume_changes(before, composed, run_dir, [o.lstrip("+~").split("=", 1)[0] for o in today])
    if composed.ckpt_path is None:
        composed.ckpt_path = "last"
    return composed, choices


def _earlier_config(run_dir: Path, overrides: list[str]) -> tuple[list[str], DictConfig]:
    """The run's earlier overrides and the config they compose; overrides in an older spelling
    (:func:`vitlab.compat.upgrade_override`) are read as today's when they no longer compose."""
    import hydra
    from hydra.errors import ConfigCompositionException

    from vitlab.compat import upgrade_override

    try:
        return overrides, hydra.compose(config_name="train", overrides=overrides)
    except ConfigCompositionException:
        upgraded = [upgrade_override(o) for o in overrides]
        if upgraded == overrides:
            raise
        return upgraded, hydra.compose(config_name="train", overrides=upgraded)


def override_history(run_dir: Path) -> list[str]:
    """The overrides of the run's first invocation, then those of each resume since (each resume's
    Hydra folder .hydra/resume_<time>/ keeps its own; a refused resume leaves none)."""
    current = this_resume_subdir(run_dir)
    files = [run_dir / ".hydra" / "overrides.yaml"]
    files += [f for f in sorted((run_dir / ".hydra").glob("resume_*/overrides.yaml")) if f.parent != current]
    return [str(o) for f in files for o in _recorded_overrides(f)]


def _recorded_overrides(path: Path) -> list[Any]:
    """The list of overrides Hydra recorded in ``path``; a damaged file is one line."""
    try:
        overrides = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any YAML or read error
        overrides, reason = None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        reason = "not a list of overrides"
    if not OmegaConf.is_list(overrides) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(
            f"run_dir: {path} is damaged ({reason}); it records how the run was started, so the run cannot be "
            "re-composed: restore it (it is a YAML list like [model=mini_vit, data=cifar10]) or start a new run"
        )
    return list(overrides)


def fixed_for_a_run(key: str) -> bool:
    """Whether the dotted config ``key`` must keep its value when the run continues: what decides the
    network's tensors or the data stream (which images, in which order, in which batches). Everything
    else may change and takes effect from the next step (the recipe's optimizer and schedule settings
    included); the data schemas declare their keys that say where or how, not what
    (:func:`vitlab.config.where_or_how`)."""
    from vitlab.config import data_keys_that_may_change

    parts = key.split(".")
    if key in ("seed", "recipe.batch_size", "recipe.repeated_aug"):
        return True
    if parts[0] == "model":
        return key != "model.compile" and "drop" not in parts[-1]
    if parts[0] == "data":
        return len(parts) > 1 and parts[1] not in data_keys_that_may_change()
    return False


def check_resume_changes(before: DictConfig, after: DictConfig, run_dir: Path, typed: list[str] = ()) -> None:
    """Refuse, in one line, an override on resume that a run cannot take mid-way (model shape, data);
    the line names the key as typed (``typed``) when it can, not one that merely follows from it."""
    old, new = _leaves(OmegaConf.to_container(before, resolve=True)), _leaves(OmegaConf.to_container(after, resolve=True))
    changed = [k for k in {**old, **new} if k != "hydra" and not k.startswith("hydra.") and old.get(k) != new.get(k)]

    def was_typed(key: str) -> bool:
        return any(key == t or key.startswith(f"{t}.") for t in typed)

    fixed = sorted((k for k in changed if fixed_for_a_run(k)), key=lambda k: (not was_typed(k), k.startswith("data."), k))
    if fixed:
        key = fixed[0]
        had = f"the run has {old[key]!r}" if key in old else "the run left it at its default"
        gives = f"the command gives {new[key]!r}" if key in new else "the command removes it"
        raise ConfigError(
            f"{key}: cannot change when continuing run_dir={run_dir} ({had}, {gives}); a run keeps its model shape "
            "and data stream: drop the override, or start a new run"
        )


def check_saved_config(run_dir: Path, composed: DictConfig) -> None:
    """A run continues from the overrides it recorded, not from its ``config.yaml`` (which each
    invocation writes, resolved, for reading): a value there that the overrides do not give (a hand
    edit) is refused in one line rather than rewritten without a word. Compared are the settings of
    the run itself (model, recipe, seed, protocol, the data stream), values both hold under the same
    key; machine-dependent ones (paths, hardware, loader settings) are not."""
    from vitlab.compat import upgrade_run_config

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = _leaves(OmegaConf.to_container(upgrade_run_config(OmegaConf.load(saved_file)), resolve=False))
    except Exception as err:  # noqa: BLE001 - any unreadable YAML
        raise ConfigError(f"config.yaml: {saved_file} is not readable YAML ({type(err).__name__}); restore it, or delete it "
                          "(each run writes it again; the run resumes from .hydra/overrides.yaml)") from None
    given = _leaves(OmegaConf.to_container(composed, resolve=True))
    for key in sorted(saved.keys() & given.keys()):
        if _the_runs_own(key) and saved[key] != given[key]:
            raise ConfigError(
                f"config.yaml: {key} is {saved[key]!r} in {saved_file} but the run's recorded overrides give {given[key]!r}; "
                f"a run resumes from its overrides: change a setting with run_dir={run_dir} {key}=<value>, and restore or "
                "delete config.yaml (each run writes it again)"
            )


def _the_runs_own(key: str) -> bool:
    from vitlab.config import data_keys_that_may_change

    parts = key.split(".")
    if parts[0] in ("model", "recipe") or key in ("seed", "protocol"):
        return key != "model.compile"
    return parts[0] == "data" and len(parts) > 1 and parts[1] not in data_keys_that_may_change() | {"batch_size"}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for name, child in node.items():
            out.update(_leaves(child, f"{prefix}{name}."))
        return out
    return {prefix[:-1]: node}


# ----------------------------------------------------------------------------- the recipe on resume
def recipe_settings(optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """What the recipe configures in a fresh optimizer and its ``LambdaLR`` schedule: each param
    group's hyper-parameters, the base LRs and the schedule functions' settings."""
    return {
        "groups": [copy.deepcopy({k: v for k, v in group.items() if k != "params"}) for group in optimizer.param_groups],
        "base_lrs": list(scheduler.base_lrs),
        "lambdas": [dict(vars(fn)) for fn in scheduler.lr_lambdas],
    }


def apply_recipe_settings(optimizer: Any, scheduler: Any, settings: dict[str, Any]) -> list[str]:
    """Put :func:`recipe_settings` back over an optimizer and schedule restored from a checkpoint
    (which restores their settings too: LR, weight decay, betas, warmup and cosine lengths); the
    groups' LRs follow at once. Returns the changes, for one info line; none when the recipe is the
    run's own."""
    changes = []
    for group, fresh in zip(optimizer.param_groups, settings["groups"], strict=True):
        for key, value in fresh.items():
            if key not in ("lr", "params") and _plain(group.get(key)) != _plain(value):
                changes.append(f"{key} {group.get(key)} -> {value}")
                group[key] = value
    if list(scheduler.base_lrs) != settings["base_lrs"]:
        changes.append(f"base lr {scheduler.base_lrs[0]} -> {settings['base_lrs'][0]}")
        scheduler.base_lrs = list(settings["base_lrs"])
    for fn, fresh in zip(scheduler.lr_lambdas, settings["lambdas"], strict=True):
        if vars(fn) != fresh:
            changes.append(f"schedule {vars(fn)} -> {fresh}")
            vars(fn).update(fresh)
    if changes:
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * fn(scheduler.last_epoch)
    return list(dict.fromkeys(changes))


def _plain(value: Any) -> Any:
    """A restored optimizer holds lists where a fresh one holds tuples (Adam's betas)."""
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------- optimizer state by name
def optimizer_state_by_name(saved: dict[str, Any], saved_names: list[str], groups: list[list[str]]) -> dict[str, Any]:
    """A saved optimizer state (torch's ``state_dict()``: per-parameter state by flat index, and
    param groups listing indices) re-indexed for an optimizer whose groups hold the parameters
    ``groups`` names, in that order. ``saved_names`` names the saved flat indices. Each group keeps
    its saved settings; the saved groups are matched to today's by the names they hold.

    Torch matches a saved state to parameters by position only, so a network whose modules were
    reordered (a checkpoint written before a refactor) would give one parameter another's moments."""
    by_names = {frozenset(saved_names[i] for i in group["params"]): group for group in saved["param_groups"]}
    flat = {name: i for i, name in enumerate(saved_names)}
    state, param_groups, index = {}, [], 0
    for names in groups:
        group = dict(by_names[frozenset(names)])
        group["params"] = list(range(index, index + len(names)))
        for offset, name in enumerate(names):
            if flat[name] in saved["state"]:
                state[index + offset] = saved["state"][flat[name]]
        param_groups.append(group)
        index += len(names)
    return {**saved, "state": state, "param_groups": param_groups}


def parameter_names(optimizer: Any, net: Any) -> list[list[str]]:
    """Each param group's parameter names, in the optimizer's order."""
    names = {id(p): n for n, p in net.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def saved_parameter_order(state_dict: dict[str, Any], net: Any, prefix: str = "net.") -> list[str]:
    """The network's parameter names in the order a checkpoint's state dict holds them (the order of
    ``named_parameters()`` when it was written)."""
    params = {n for n, _ in net.named_parameters()}
    return [k[len(prefix):] for k in state_dict if k.startswith(prefix) and k[len(prefix):] in params]


def in_order(net: Any, order: list[str]) -> Any:
    """``net`` as an optimizer factory sees it, with its parameters named in ``order``: the groups an
    optimizer built from it gets are those of the network when its parameters were in that order."""
    import torch

    class _InOrder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.__dict__["_net"] = net

        def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
            params = dict(net.named_parameters())
            return ((name, params[name]) for name in order)

        def parameters(self, recurse: bool = True):
            return (p for _, p in self.named_parameters())

        def __getattr__(self, name: str) -> Any:
            return getattr(self.__dict__["_net"], name)

    return _InOrder()
