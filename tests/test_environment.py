"""A torch and a torchvision that cannot work together (what pip installs when it pairs a CPU torch
with a CUDA torchvision) is one line with the fix, from every command, before anything else."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

from vitlab.models._registry import registry_nodes
from vitlab.registry_nodes import _write, sources_key


def _with_broken_torchvision(tmp_path, *args: str, cache=None) -> subprocess.CompletedProcess:
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    # What a torchvision built for another torch raises when it is imported.
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    if cache is not None:
        env["VITLAB_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cache", ["filled", pytest.param("empty", marks=pytest.mark.slow)])
def test_a_command_says_it_in_one_line(tmp_path, cache):
    """With the registry's config nodes in the cache (no torch until the run starts), and without
    (the command line's check reads the registry, which imports torch and torchvision)."""
    folder = tmp_path / "cache"
    if cache == "filled":
        _write(folder / f"registry-{sources_key()}.json", registry_nodes())
    done = _with_broken_torchvision(tmp_path, "-m", "vitlab.train", "model=mini_vit", cache=folder)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: torch ") and "do not work together (operator torchvision::nms does not exist)" in line
    assert "pip install --force-reinstall torch torchvision" in line and not list(tmp_path.glob("logs"))


@pytest.mark.slow  # a second interpreter start; the command's case runs in the default run
def test_importing_the_networks_says_it_in_the_import_error(tmp_path):
    done = _with_broken_torchvision(tmp_path, "-c", "import vitlab.models")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("ImportError: torch ")
