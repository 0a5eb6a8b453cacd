"""What the command-line entry points share: one-line errors and early checks of group choices."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from vitlab.errors import ConfigError, VitlabError

GROUPS = ("model", "data", "recipe", "hardware", "callbacks", "logger", "paths", "experiment", "sweep")


def check_group_choices(argv: Sequence[str], conf_dir: Path) -> None:
    """Fail on ``model=foo`` when ``conf/model/foo.yaml`` does not exist, before Hydra composes.

    Hydra's own message spans many lines and lists the search path; this one names the key and the
    options. Sweep lists (``model=a,b``) are checked item by item; sweep functions are left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or not value or value == "null" or "(" in value:
            continue
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in options:
                raise ConfigError(f"{key}={choice}: no such {key} config; choose one of: {', '.join(options)} (files in conf/{key}/)")


def exit_with_error(err: VitlabError) -> None:
    """Bad input: one ``error:`` line on stderr, exit status 2, no traceback."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
