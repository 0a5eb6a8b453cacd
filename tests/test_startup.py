"""A refused command line and ``--help`` answer without importing torch, Lightning or timm: the
registry's config nodes come from vitlab's cache, keyed by vitlab's sources (timings: bench/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT

from vitlab.models._registry import registry_nodes as live_nodes
from vitlab.registry_nodes import _read, _write, model_options, sources_key

HEAVY = ("torch", "lightning", "timm", "torchvision")
# The command as a console script runs it, then which heavy packages it imported.
PROBE = f"""
import runpy, sys
sys.argv = ["vitlab-train", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("vitlab.train", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("probe:", code, *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)
"""


def _probe(cache, cwd, *args: str) -> tuple[int, list[str], subprocess.CompletedProcess]:
    env = {**os.environ, "VITLAB_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1].split()
    assert last[0] == "probe:", done.stderr[-2000:]
    return int(last[1]), last[2:], done


def test_help_and_refused_command_lines_import_no_torch_once_the_cache_is_filled(tmp_path):
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    code, heavy, first = _probe(cache, cwd, "--help")  # fills the cache: the registry is read once
    assert code == 0 and "model: " in first.stdout and list(cache.glob("registry-*.json"))
    for args, expected_code, says in [
        (["--help"], 0, "vit_rope_mixed"),
        (["model=nope"], 2, "error: model=nope: no such model config"),
        (["model=vit", "data=synthetic", "recipe.epochz=3"], 2, "did you mean recipe.epochs?"),
        (["model=vit", "data=synthetic", "model.net.depthh=3"], 2, "did you mean model.net.depth?"),
    ]:
        code, heavy, done = _probe(cache, cwd, *args)
        assert (code, heavy) == (expected_code, []), done.stderr[-2000:]
        assert says in done.stdout + done.stderr
        if args == ["--help"]:
            assert done.stdout == first.stdout  # the same help, from the cache
    assert not os.listdir(cwd)  # nothing written where it ran


def test_the_cached_nodes_are_the_registrys(tmp_path):
    nodes = live_nodes()
    path = tmp_path / "registry.json"
    _write(path, nodes)
    assert _read(path) == nodes  # nothing lost in the file: tuples are lists already, numbers keep their type
    assert set(nodes["model"]) <= set(model_options()) and set(nodes["net"]) >= set(nodes["model"])
    path.write_text('{"net": {"vit": ')  # a damaged file is read again from the registry
    assert _read(path) is None


def test_a_cache_that_cannot_be_written_leaves_nothing_and_costs_only_time(tmp_path, monkeypatch):
    import vitlab.registry_nodes as cached

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cached.json, "dump", disk_full)
    cached._write(tmp_path / "registry.json", live_nodes())
    assert list(tmp_path.iterdir()) == []  # neither the file nor a half-written temporary one


def test_an_edit_of_a_source_or_a_new_model_file_gives_a_new_key(tmp_path):
    package = tmp_path / "vitlab"
    shutil.copytree(ROOT / "vitlab", package, ignore=shutil.ignore_patterns("__pycache__"))
    key = sources_key(package)
    assert key == sources_key(ROOT / "vitlab")
    vit = package / "models" / "vit.py"
    vit.write_text(vit.read_text() + "# an edit\n")
    assert sources_key(package) != key
    vit.write_text((ROOT / "vitlab" / "models" / "vit.py").read_text())
    assert sources_key(package) == key
    (package / "conf" / "model" / "extra.yaml").write_text("defaults: [vit]\n")
    assert sources_key(package) != key


def test_evaluate_and_analyze_print_their_own_help(tmp_path):
    """Their help template, filled by vitlab (not Hydra's listing of every group): header, groups, config."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, key in (("evaluate", "picture_images"), ("analyze", "num_images")):
        done = subprocess.run([sys.executable, "-m", f"vitlab.{command}", "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(f"== vitlab.{command} ==") and "\nmodel: " in done.stdout, done.stdout[:500]
        assert f"\n{key}: " in done.stdout and "\nhydra:\n" not in done.stdout  # the command's config, not Hydra's
    assert not os.listdir(tmp_path)
