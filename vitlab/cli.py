"""What the command-line entry points share: one-line errors and early checks of group choices."""

from __future__ import annotations

import difflib
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from vitlab._environment import check_torch_pair
from vitlab.errors import ConfigError, VitlabError

GROUPS = ("model", "data", "recipe", "hardware", "callbacks", "logger", "paths", "experiment", "sweep", "protocol", "debug")


def check_group_choices(argv: Sequence[str], conf_dir: Path) -> None:
    """Fail on ``model=foo`` when there is no such config (a file in ``conf/<group>/``, or for
    ``model`` a registry entry), before Hydra composes.

    Hydra's own message spans many lines and lists the search path; this one names the key and the
    options. Sweep lists (``model=a,b``) and lists of configs (``logger=[csv,wandb]``) are checked item
    by item; sweep functions are left to Hydra.
    """
    extra = user_config_dirs(argv)
    if extra is None:  # a package on the search path: its configs are Hydra's to find
        return
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or not value or value == "null" or "(" in value:
            continue
        options = sorted({*_group_options(key, conf_dir), *(p.stem for d in extra for p in (d / key).glob("*.yaml"))})
        for choice in value.strip("[]").split(","):  # a sweep a,b or a list [a,b] (logger=[csv,wandb])
            if choice not in options:
                where = "the model registry, vitlab.models" if key == "model" else f"files in vitlab/conf/{key}/"
                where += "".join(f" or {d / key}/" for d in extra)
                raise ConfigError(f"{key}={choice}: no such {key} config; choose one of: {', '.join(options)} ({where})")


def user_config_dirs(argv: Sequence[str]) -> list[Path] | None:
    """The folders ``hydra.searchpath=[file://<folder>, ...]`` adds (a user's own configs); None when
    it names a ``pkg://`` package too."""
    dirs: list[Path] = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for item in value.strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("pkg://"):
                return None
            if item:
                dirs.append(Path(item.removeprefix("file://")))
    return dirs


# Groups that lightning-hydra-template users reach for, and vitlab's way of doing the same.
TEMPLATE_GROUPS = {
    "trainer": "hardware profiles are chosen with hardware=<{hardware}>; one Trainer argument is trainer.<key>=<value>",
    "hparams_search": "sweeps are chosen with sweep=<{sweep}> and -m (sweep=optuna_mini_vit is an Optuna search)",
}


def check_template_groups(argv: Sequence[str], conf_dir: Path) -> None:
    """``trainer=cpu`` or ``hparams_search=...`` (the template's groups) name vitlab's equivalent in
    one line instead of Hydra's composition error."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in TEMPLATE_GROUPS:
            options = {group: "|".join(_group_options(group, conf_dir)) for group in ("hardware", "sweep")}
            raise ConfigError(f"{key}={value}: no {key} group in vitlab; " + TEMPLATE_GROUPS[key].format(**options))


def help_groups(conf_dir: Path) -> str:
    """``group: option, ...`` per line for ``--help``: the groups a user picks from (:data:`GROUPS`),
    without the internal ones and without the schemas."""
    groups = sorted(set(GROUPS) & {p.name for p in conf_dir.iterdir() if p.is_dir()} | {"model"})
    lines = [f"{g}: {', '.join(o for o in _group_options(g, conf_dir) if o != 'schema')}" for g in groups]
    return "\n".join(lines)


def _group_options(group: str, conf_dir: Path) -> list[str]:
    if group == "model":
        from vitlab.registry_nodes import model_options

        return model_options()
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def warn_unknown_groups(argv: Sequence[str], conf_dir: Path) -> None:
    """``+name=value`` with a name that is no config group adds a new top-level key that nothing
    reads; Hydra accepts it without a word, so a mistyped group (``+experiment_=...``) would go
    unnoticed. One ``warning:`` line on stderr names the known groups; the run goes on."""
    groups = sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for arg in argv:
        if not arg.startswith("+") or arg.startswith("++") or "=" not in arg:
            continue
        key = arg[1:].partition("=")[0]
        if "." in key or "/" in key or key in groups:
            continue
        print(
            f"warning: {arg}: {key!r} is not a config group, so this adds a new top-level key that nothing reads; "
            f"the groups are: {', '.join(groups)} (use {key}=... without + to change an existing key)",
            file=sys.stderr,
        )


def exit_with_error(err: VitlabError) -> None:
    """Bad input: one ``error:`` line on stderr, exit status 2, no traceback."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def run_entry_point(hydra_main: Callable[[], Any], *checks: Callable[[Sequence[str]], None]) -> None:
    """A ``python -m vitlab.<command>`` entry point: the cheap ``checks`` of the command line run first,
    in order, so bad input is one ``error:`` line before Hydra composes; then the Hydra task."""
    quiet_library_notices()
    try:
        for check in checks:
            check(sys.argv[1:])
    except VitlabError as err:
        exit_with_error(err)
    if not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"} & set(sys.argv[1:]):
        check_torch_pair(command=True)  # before Hydra makes the run folder
    hydra_main()


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_library_notices() -> None:
    """What libraries print on every run that says nothing about the run: Lightning's cloud-logger
    advertisement, and the deprecation its batch handling triggers on this torch (Lightning's own
    code, fixed upstream in a later release)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisement) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvertisement())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def lightning_lines_once() -> None:
    """Lightning's info lines once each. Its package logger has a console handler of its own, and a
    run imports Lightning after Hydra has set up logging (the command line is read first, without
    it), so its records also reach Hydra's console (and the run's log file): that handler goes."""
    logger = logging.getLogger("lightning")
    for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
        logger.removeHandler(handler)


def sweep_folders_name_what_varies(argv: Sequence[str], conf_dir: Path) -> list[str]:
    """A sweep's job folders (``<n>_<key>@<value>__...``) name the swept keys only: the overrides every
    job shares (not sweeps: ``data=cifar10`` beside ``model=a,b``) join Hydra's ``exclude_keys``, so
    ``seed=0`` and ``seed=1`` differ in a readable name, not in a digest of everything else."""
    args = list(argv)
    if not {"-m", "--multirun"} & set(args) or any(a.startswith("hydra.job.config.override_dirname.") for a in args):
        return args
    shared = []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")) or arg.lstrip("+~").startswith("hydra"):
            continue
        try:
            override = OverridesParser.create().parse_override(arg)
        except OverrideParseException:
            return args  # Hydra reports it
        if not override.is_sweep_override():
            shared.append(override.key_or_group)
    if not shared:
        return args
    from omegaconf import OmegaConf

    excluded = list(OmegaConf.load(conf_dir / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys)
    keys = ",".join(dict.fromkeys([*excluded, *shared]))
    return [*args, f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"]


def compose_or_refuse(conf_dir: Path, config_name: str, overrides: Sequence[str], return_hydra_config: bool = False,
                      as_given: Sequence[str] | None = None) -> DictConfig:
    """Hydra's compose of ``config_name`` with ``overrides``; what Hydra refuses is vitlab's one line
    (:func:`composition_error`), about the command line ``as_given`` (default ``overrides``)."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        raise composition_error(err, list(as_given if as_given is not None else overrides), conf_dir, config_name) from None


def print_help(argv: Sequence[str], conf_dir: Path, config_name: str) -> None:
    """``--help`` (``-h``): the command's help template (``hydra.help``) with the composed config, then
    exit. Hydra's own ``--help`` lists every option of every group, its internal ones included, before
    filling the template, which takes seconds; the template shows the user's groups only."""
    args = list(argv)
    if not {"--help", "-h"} & set(args):
        return
    import string

    from omegaconf import OmegaConf

    overrides = [a for a in args if not a.startswith("-")]
    cfg = compose_or_refuse(conf_dir, config_name, overrides, return_hydra_config=True)
    template = cfg.hydra.help.template  # its ${hydra.help.header}, groups and footer resolved
    task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(task)))
    raise SystemExit(0)


def print_resolved_config(argv: Sequence[str], conf_dir: Path, config_name: str) -> None:
    """``--cfg hydra --resolve`` (and ``--cfg all --resolve``): print the config and exit.

    Hydra resolves ``--cfg hydra`` after removing the task's keys, so ``hydra.run.dir``, built from
    ``run_dir``, ``paths.log_dir`` and ``task_name``, fails with an InterpolationKeyError. Here the
    whole config is composed and resolved first, and the run-folder resolvers only name the folder
    a run would get instead of creating it (printing a config leaves no empty run folder behind).
    Other ``--cfg`` uses are left to Hydra."""
    args = list(argv)
    part = None
    for i, arg in enumerate(args):
        if arg in ("--cfg", "-c") and i + 1 < len(args):
            part = args[i + 1]
        elif arg.startswith("--cfg="):
            part = arg.partition("=")[2]
    if part not in ("hydra", "all") or "--resolve" not in args or {"-p", "--package", "-m", "--multirun"} & set(args):
        return
    skip = {i for i, arg in enumerate(args) if arg in ("--cfg", "-c")}
    skip |= {i + 1 for i in skip}
    overrides = [a for i, a in enumerate(args) if i not in skip and not a.startswith("-")]
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from vitlab.config import register_configs

    cfg = compose_or_refuse(conf_dir, config_name, overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} interpolations
    OmegaConf.set_readonly(cfg.hydra, None)
    naming_only = {
        "vitlab.run_dir": lambda run_dir, fresh: fresh if run_dir in (None, "") else str(run_dir),
        "vitlab.fresh_dir": lambda path: path,
    }
    for name, fn in naming_only.items():
        OmegaConf.clear_resolver(name)
        OmegaConf.register_new_resolver(name, fn)
    try:
        OmegaConf.resolve(cfg)
    except InterpolationResolutionError as err:
        raise ConfigError(f"{err.full_key}: {str(err).splitlines()[0]}") from None
    finally:
        for name in naming_only:
            OmegaConf.clear_resolver(name)
        register_configs()  # the folder-creating resolvers again
    shown = OmegaConf.to_container(cfg)
    if part == "hydra":
        shown = {"hydra": shown["hydra"]}
    for key in ("help", "hydra_help"):  # left out, as Hydra prints it
        shown["hydra"].pop(key, None)
    print(OmegaConf.to_yaml(shown), end="")
    sys.exit(0)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Around the body of a ``@hydra.main`` task: Hydra reports exceptions raised there with a
    traceback, so bad input (a missing mandatory value, an interpolation that does not resolve, a
    :class:`VitlabError`) leaves as one ``error:`` line instead."""
    try:
        yield
    except MissingMandatoryValue as err:
        exit_with_error(ConfigError(f"{err.full_key}: no value given; add {err.full_key}=<value> to the command"))
    except InterpolationResolutionError as err:
        exit_with_error(ConfigError(f"{err.full_key}: {str(err).splitlines()[0]}"))
    except VitlabError as err:
        exit_with_error(err)


def _without_print_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without Hydra's flags that print the config (``--cfg job``, ``--resolve``, ``-p key``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--cfg", "-c", "--package", "-p"):
            skip = True
        elif not (arg == "--resolve" or arg.startswith(("--cfg=", "--package="))):
            kept.append(arg)
    return kept


def check_overrides_compose(argv: Sequence[str], conf_dir: Path, config_name: str) -> None:
    """Compose the config of a single run once before Hydra does, so that a mistyped key, a value of
    the wrong type or an unparsable override is one ``error:`` line instead of Hydra's multi-line
    report. A sweep (``-m``, or a sweep config) is checked with its swept overrides left out; printing
    the config (``--cfg job``, ``--resolve``, ``-p``) is checked like a run; commands with other Hydra
    flags (``--help``...) are left to Hydra."""
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in _without_print_flags(argv) if arg not in ("-m", "--multirun")]
    if not overrides or any(arg.startswith("-") or ("=" not in arg and not arg.startswith("~")) for arg in overrides):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise composition_error(err, overrides) from None
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    # A swept key is checked with its first value (model=a,b composes as model=a).
    single = [o for o in overrides if o not in sweeps] + [_first_of_sweep(o) for o in parsed if o.is_sweep_override()]
    single = [o for o in single if o]
    cfg = compose_or_refuse(conf_dir, config_name, single, return_hydra_config=bool(sweeps), as_given=overrides)
    if sweeps and not multirun and str(cfg.hydra.mode) != "RunMode.MULTIRUN":
        raise ConfigError(f"{sweeps[0]}: a comma-separated value is a sweep; add -m to sweep over it, or write key=[a,b] for a list")


def composition_error(
    err: Exception, overrides: Sequence[str] = (), conf_dir: Path | None = None, config_name: str = "train"
) -> ConfigError:
    """One line for a Hydra composition failure, naming the key and what to do."""
    message = str(err)
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if isinstance(err, OverrideParseException) or "no viable alternative" in message:
        bad = next((o for o in overrides if _unparsable(o)), "an override")
        return ConfigError(
            f"{bad}: not a valid override ({message.splitlines()[0]}); write key=value, key=[a,b] for a list, "
            "+key=value to add a key, or quote a value with special characters"
        )
    if isinstance(err, MissingConfigException) or "Could not find" in message:
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
        options = re.findall(r"^\t(\S+)$", message, flags=re.MULTILINE)
        group, name = (found.group(1), found.group(2)) if found else ("config", "?")
        hint = f"choose one of: {', '.join(options)}" if options else "check the name"
        if group in ("hydra/launcher", "hydra/sweeper"):
            hint += ' (the SLURM launcher and the Optuna sweeper need pip install -e ".[slurm]" / ".[optuna]")'
        return ConfigError(f"{group}={name}: no such {group} config; {hint}")
    if key and "Could not override" in message:
        suggestion = _similar_keys(key, conf_dir, config_name, overrides)
        hint = f"did you mean {' or '.join(suggestion)}? " if suggestion else ""
        return ConfigError(
            f"{key}: no such key in the config; {hint}`python -m vitlab.train --cfg job` prints every key "
            f"(a new key is added with +{key}=...)"
        )
    if key and cause is not None:
        detail = str(cause).splitlines()[0]
        return ConfigError(f"{key}: {detail}; give a value of that type")
    if "Ambiguous value for argument" in message:
        arg = message.split("'", 2)[1] if "'" in message else "a value with commas"
        return ConfigError(f"{arg}: a comma-separated value is a sweep; add -m to sweep over it, or write key=[a,b] for a list")
    if "Could not append to config" in message or "Could not delete from config" in message:
        found = re.search(r"'([^']+)'", message)
        where = found.group(1) if found else "config"
        first = message.splitlines()[0]
        return ConfigError(f"{where}: {first[0].lower()}{first[1:]} (use key=value to change an existing key, +key=value to add one)")
    return ConfigError(f"config: {message.splitlines()[0] if message else type(err).__name__}")


def _first_of_sweep(override) -> str | None:
    try:
        first = next(iter(override.sweep_string_iterator()), None)
    except (HydraException, TypeError, ValueError):
        return None
    return None if first is None else f"{override.get_key_element()}={first}"


def _unparsable(override: str) -> bool:
    try:
        OverridesParser.create().parse_override(override)
    except HydraException:
        return True
    return False


def _leaf_keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for name in node.keys():
        child = node._get_node(name)
        full = f"{prefix}{name}"
        if isinstance(child, DictConfig):
            yield from _leaf_keys(child, f"{full}.")
        else:
            yield full


def _similar_keys(key: str, conf_dir: Path | None, config_name: str, overrides: Sequence[str]) -> list[str]:
    """Keys of the composed config that end like ``key`` or are spelled almost like it."""
    if conf_dir is None:
        return []
    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in GROUPS and "," not in o]
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=groups)
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException):
        return []
    keys = list(_leaf_keys(cfg))
    last = key.rsplit(".", 1)[-1]
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == last and k != key]
    return same_name[:3] or difflib.get_close_matches(key, keys, n=2, cutoff=0.75)
