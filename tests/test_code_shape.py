"""What the design review asked of vitlab/'s code, kept true: no function over 80 lines, and the ViT
backbone's constructor takes its own options only (attention, position and block are typed nodes)."""

import ast
import inspect

from conftest import ROOT
from vitlab.models.vit import ViT

LIMIT = 80


def long_functions(root=ROOT / "vitlab") -> list[str]:
    """``file:line name (N lines)`` of every function below ``root`` longer than :data:`LIMIT`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > LIMIT:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_vitlab_is_over_80_lines():
    assert not long_functions(), long_functions()


def test_the_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path) == [f"long.py:1 long ({LIMIT + 1} lines)"]


def test_the_vit_constructor_takes_at_most_15_options():
    options = [p for p in inspect.signature(ViT.__init__).parameters if p != "self"]
    assert len(options) <= 15, options
    assert {"attention", "position", "block"} <= set(options)
