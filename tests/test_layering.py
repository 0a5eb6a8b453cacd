"""Import layering: models and families do not reach into data code, callbacks and shared modules
do not import entry points. Read from the source (ast), so a late import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


RULES = [
    # (files, forbidden import prefixes)
    (["vitlab/models", "vitlab/layers", "vitlab/families"], ("vitlab.datamodules", "vitlab.callbacks", "datamodules", "callbacks", "vitlab.train", "vitlab.analyze", "vitlab.evaluate")),
    (["vitlab/callbacks"], ("vitlab.train", "vitlab.analyze", "vitlab.evaluate")),
    (["vitlab/analyze.py", "vitlab/evaluate.py", "vitlab/runs.py", "vitlab/viz.py", "vitlab/instantiate.py"], ("vitlab.train",)),
]


@pytest.mark.parametrize("where, forbidden", RULES)
def test_no_wrong_way_imports(where, forbidden):
    files = [f for w in where for f in ((ROOT / w).rglob("*.py") if (ROOT / w).is_dir() else [ROOT / w])]
    assert files
    wrong = sorted(
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in imported_modules(f)
        if any(m == p or m.startswith(p + ".") for p in forbidden)
    )
    assert not wrong, wrong
