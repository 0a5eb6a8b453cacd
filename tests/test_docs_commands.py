"""Every ``vitlab-train`` command line in README.md and docs/ composes as written: its groups, keys
and values are today's (``--cfg job`` prints the config a run would use, and fails as the run would).
Commands that name a run folder of the reader's own (``run_dir=<...>``) are left out."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from test_config_errors import run_in_process

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
START = re.compile(r"^\s+(PYTHONPATH=\S+ )?(vitlab-train|python -m vitlab\.train) ")


def train_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments) of each documented train command, continuation lines joined, comments cut."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if not START.match(line):
                continue
            text, j = line, i
            while text.rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                text = text.rstrip()[:-1] + " " + lines[j].strip()
            words = shlex.split(text.split(" #")[0])
            words = words[words.index("vitlab-train") + 1:] if "vitlab-train" in words else words[words.index("vitlab.train") + 1:]
            found.append((f"{doc.relative_to(ROOT)}:{i + 1}", words))
    return found


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
