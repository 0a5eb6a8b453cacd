"""docs/extending.md's walkthroughs, run as written: the code blocks become files of a package outside
vitlab, and the documented command runs (with a batch limit appended, to stay fast)."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest

from conftest import ROOT
from test_config_errors import run_in_process

DOC = (ROOT / "docs" / "extending.md").read_text()
FAST = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "callbacks.progress_bar.kind=tqdm"]


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:] if end < 0 else DOC[start:end]


def blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"```{language}\n(.*?)```", text, re.S)]


def command(text: str) -> list[str]:
    """The arguments of the documented ``vitlab-train`` command (an indented line, continued by ``\\``)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"^\s+(PYTHONPATH=\S+ )?vitlab-train ", ln))
    end = start
    while lines[end].rstrip().endswith("\\"):
        end += 1
    words = " ".join(ln.rstrip().rstrip("\\") for ln in lines[start:end + 1]).split()
    return words[words.index("vitlab-train") + 1:]


def write_walkthrough(folder, title: str, module: str, config: str) -> tuple[str, list[str]]:
    """The section's Python block as ``mypkg/<module>``, its YAML as ``myconf/<config>``; returns the
    section and its command's arguments."""
    text = section(title)
    (code,), (yaml_text,) = blocks(text, "python"), blocks(text, "yaml")
    (folder / "mypkg" / module).write_text(code)
    (folder / "myconf" / config).parent.mkdir(parents=True)
    (folder / "myconf" / config).write_text(yaml_text)
    return text, command(text)


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_a_dataset_of_ones_own_package_trains_as_documented(user_folder, one_thread):
    _, args = write_walkthrough(user_folder, "A new dataset", "noise.py", "data/noise.yaml")
    assert "data=noise" in args and "hydra.searchpath=[file://myconf]" in args
    code, stderr = run_in_process([*args, *FAST, "paths.output_dir=run"])
    assert code == 0, stderr[-3000:]
    metrics = json.loads((user_folder / "run" / "metrics.json").read_text())
    assert metrics["data"] == "noise" and metrics["test/images"] == 400  # 4 classes x per_class 100
    # A mistyped name lists the user's configs too.
    code, stderr = run_in_process([*[a if a != "data=noise" else "data=nois" for a in args], *FAST])
    assert code == 2 and "error: data=nois: no such data config; choose one of: " in stderr and "noise" in stderr


@pytest.mark.slow  # a training run; the dataset walkthrough runs the same path in the default run
def test_a_report_metric_of_ones_own_callback_reaches_metrics_json(user_folder, one_thread):
    text = section("A new report metric")
    (code,) = blocks(text, "python")
    (user_folder / "mypkg" / "calibration.py").write_text(code)
    args = [a for a in command(text) if a not in ("-m", "seed=0,1")]
    code, stderr = run_in_process([*args, *FAST, "data.train_size=64", "data.val_size=16", "data.test_size=32", "recipe.batch_size=16",
                                   "paths.output_dir=run"])
    assert code == 0, stderr[-3000:]
    metrics = json.loads((user_folder / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test/ece"] <= 1


@pytest.mark.slow  # two training runs; the dataset walkthrough runs the same path in the default run
def test_a_family_of_ones_own_package_trains_loads_and_checks_its_options(user_folder, one_thread):
    from vitlab.api import load_run

    _, args = write_walkthrough(user_folder, "A new family", "rownet.py", "model/rownet.yaml")
    assert "model=rownet" in args
    code, stderr = run_in_process([*args, *FAST, "data.train_size=64", "data.val_size=16", "data.test_size=32",
                                   "recipe.batch_size=16", "model.net.dim=32", "paths.output_dir=run"])
    assert code == 0, stderr[-3000:]
    metrics = json.loads((user_folder / "run" / "metrics.json").read_text())
    assert metrics["model"] == "mypkg.rownet.RowNet" and metrics["params"] > 0
    run = load_run(user_folder / "run" / "checkpoints" / "last.ckpt")
    assert type(run.module.net).__name__ == "RowNet" and run.module.net.head.in_features == 32
    code, stderr = run_in_process([*args, *FAST, "+model.net.dimm=96"])
    assert code == 2 and "error: model.net.dimm: mypkg.rownet.RowNet (RowNetConfig) has no such setting; did you mean dim?" in stderr, stderr[-2000:]
    code, stderr = run_in_process([*args, *FAST, "+model.net.num_heads=5"])
    assert code == 2 and "error: model.net.dim: 64 is not divisible by num_heads 5" in stderr, stderr[-2000:]
