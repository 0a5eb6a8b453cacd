"""Shared fixtures: compose the real config tree with the Hydra compose API, small and on CPU."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "vitlab" / "conf"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The default run spreads test files over one worker per core (-n auto): one torch thread per
    # worker, and per process it starts, or the workers' thread pools fight over the same cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# What vitlab keeps about the machine (the measured matmul peak) goes to a folder of this test run,
# not the user's ~/.cache/vitlab.
os.environ.setdefault("VITLAB_CACHE_DIR", tempfile.mkdtemp(prefix="vitlab-test-cache-"))

# A run of a few seconds: synthetic data, tiny splits, CPU, no workers, plain progress output.
SMOKE = [
    "data=synthetic",
    "hardware=cpu",
    "hardware.num_workers=0",
    "data.train_size=128",
    "data.val_size=32",
    "data.test_size=32",
    "recipe.epochs=1",
    "recipe.batch_size=32",
    "recipe.repeated_aug=1",
    "callbacks.progress_bar.kind=tqdm",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
]


@pytest.fixture(autouse=True)
def no_log_handlers_on_closed_streams():
    """A command run in this process (Hydra's job logging) binds log handlers to the test's captured
    stdout/stderr, which pytest closes when the test ends; a later test whose libraries log would then
    print "--- Logging error ---". Such handlers go when their test does."""
    yield
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The default run spreads whole test files (module fixtures built once per file) over one worker
    per core with pytest-xdist. Set here rather than in ``addopts``, so that ``-p no:xdist`` runs the
    suite in one process instead of failing on an unknown ``-n``; ``-n N`` and ``-n 0`` still choose."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses is None and not config.option.tx:
        config.option.numprocesses = "auto"
        if config.option.dist == "no":
            config.option.dist = "loadfile"


def compose_config(overrides: Sequence[str] = (), output_dir: Path | None = None, hydra: bool = False) -> DictConfig:
    """The composed ``train`` config; ``hydra=True`` includes Hydra's own node (sweeper, mode)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_data_config(name: str, data_dir: Path, *overrides: str, batch_size: int = 8) -> DictConfig:
    """One ``data`` config alone, resolved against stand-in paths, recipe, hardware and seed."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        cfg = compose(overrides=[f"+data={name}", *overrides])
    context = {
        "paths": {"data_dir": str(data_dir)},
        "recipe": {"batch_size": batch_size, "repeated_aug": 1, "augment": {"hflip": True, "crop_padding": 4}},
        "hardware": {"num_workers": 0, "pin_memory": False},
        "seed": 0,
    }
    cfg = OmegaConf.merge(context, cfg)
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture
def one_thread():
    """For tests of small tensors: one torch thread is as fast, and does not stall on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def smoke_cfg(tmp_path) -> Callable[..., DictConfig]:
    """``smoke_cfg(*overrides, out="run")``: the smoke config writing into ``tmp_path / out``."""

    def make(*overrides: str, out: str = "run") -> DictConfig:
        return compose_config([*SMOKE, *overrides], output_dir=tmp_path / out)

    return make


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m vitlab.train <args>`` in ``cwd``, as a user would run it (this checkout's code first
    on the path, whatever the installed copy points at)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "vitlab.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@functools.cache
def train_help() -> str:
    """The stdout of ``python -m vitlab.train --help``, run once per session (a process start costs
    seconds) in an empty folder, which must stay empty."""
    with tempfile.TemporaryDirectory() as cwd:
        done = run_cli("--help", cwd=Path(cwd))
        assert done.returncode == 0, done.stderr[-2000:]
        assert not os.listdir(cwd), "--help wrote into its working folder"
    return done.stdout


def flip_tensor_byte(path: Path, offset: int = 5) -> None:
    """Invert one byte inside the data of the largest tensor stored in a checkpoint (a zip archive whose
    tensors lie uncompressed in ``<archive>/data/<n>`` entries), as bit rot or a bad copy would."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = entry.header_offset  # local header: 30 bytes, then the name and the extra field
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_len + extra_len + offset] ^= 0xFF
    path.write_bytes(bytes(data))
