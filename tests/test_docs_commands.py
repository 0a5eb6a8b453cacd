"""Every ``vitlab-train`` command line in README.md and docs/ composes as written: its groups, keys
and values are today's (``--cfg job`` prints the config a run would use, and fails as the run would).
Commands that name a run folder of the reader's own (``run_dir=<...>``) are left out."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import pytest

from conftest import ROOT
from test_config_errors import run_in_process

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class DocCommand:
    """One documented command line: ``where`` (file:line), the ``program`` as written (``vitlab-report``
    or ``python -m vitlab.report``), an ``env`` prefix (``PYTHONPATH=.``) and the ``args`` text, unsplit
    (a reader's placeholders such as ``<run folder>`` hold spaces)."""

    where: str
    env: dict[str, str]
    program: str
    args: str

    @property
    def text(self) -> str:
        return f"{self.program} {self.args}".strip()


def documented_commands(*commands: str) -> list[DocCommand]:
    """Each indented line of README.md and docs/ that runs ``vitlab-<command>`` or ``python -m
    vitlab.<command>`` for one of ``commands``: continuation lines (a trailing ``\\``, or a deeper
    indented line, as a wrapped synopsis) joined, ``# comments`` cut."""
    names = "|".join(commands)
    start = re.compile(rf"^(\s+)((?:[A-Z_]+=\S+ )*)(vitlab-(?:{names})|python -m vitlab\.(?:{names}))(?=\s|$)")
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            match = start.match(line)
            if not match:
                continue
            indent, text, j = len(match.group(1)), line.split(" #")[0].rstrip(), i
            while j + 1 < len(lines) and (text.endswith("\\") or _deeper(lines[j + 1], indent)):
                j += 1
                text = text.removesuffix("\\").rstrip() + " " + lines[j].split(" #")[0].strip()
            env = dict(word.split("=", 1) for word in match.group(2).split())
            args = text[match.end(3):].strip()
            found.append(DocCommand(f"{doc.relative_to(ROOT)}:{i + 1}", env, match.group(3), args))
    return found


def _deeper(line: str, indent: int) -> bool:
    return bool(line.strip()) and len(line) - len(line.lstrip()) > indent


def train_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments) of each documented train command."""
    return [(c.where, shlex.split(c.args)) for c in documented_commands("train")]


def _distinct(commands: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The first place of each command (README.md and docs/usage.md share some)."""
    seen: dict[tuple[str, ...], str] = {}
    for where, args in commands:
        seen.setdefault(tuple(args), where)
    return [(where, list(args)) for args, where in seen.items()]


COMMANDS = _distinct([(where, args) for where, args in train_commands()
                      if not any("<" in a or a.startswith(("run_dir=", "--help")) for a in args)])


def test_the_docs_hold_train_commands():
    assert len(COMMANDS) >= 25, COMMANDS


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_composes(where, args, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    for folder in ("myconf/data", "myconf/model"):  # the extending.md walkthroughs' own config folder
        (tmp_path / folder).mkdir(parents=True)
    extending = (ROOT / "docs" / "extending.md").read_text()
    for name, body in re.findall(r"`myconf/(\w+/\w+\.yaml)`.*?```yaml\n(.*?)```", extending, re.S):
        (tmp_path / "myconf" / name).write_text(re.sub(r"(?m)^   ", "", body))
    if "data=noise" in args and not (tmp_path / "myconf" / "data" / "noise.yaml").exists():
        pytest.fail("docs/extending.md's noise.yaml was not found")
    # A sweep composes as its first job would.
    one = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0]
           if "=" in a and "," in a and not a.split("=", 1)[1].startswith("[") else a for a in args if a not in ("-m", "--multirun")]
    code, stderr = run_in_process([*[a for a in one if a != "--cfg" and a != "job"], "--cfg", "job"])
    assert code == 0, f"{where}: {' '.join(args)}\n{stderr[-2000:]}"
