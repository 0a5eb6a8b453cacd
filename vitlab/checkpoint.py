"""Checkpoint files: safe loading, the resume check, atomic writes and the RNG state a resume needs.

Checkpoints hold plain tensors and containers only, so they load with ``torch.load(weights_only=True)``;
a file that needs more (a pickled Python object: a tampered or foreign file) is refused with one line
instead of being executed. Before a run resumes from a checkpoint, :func:`check_resume_checkpoint`
makes sure it belongs to the configured network, so a mismatch is one line naming the key, not a
``load_state_dict`` traceback after the data is loaded.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import ConfigError


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded weights-only on the CPU (memory-mapped, nothing copied).

    A file that is not a checkpoint, or one whose pickle holds anything beyond tensors and plain
    containers, raises :class:`ConfigError` naming ``key`` and the file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        # torch's message spans a dozen lines; the line naming the offending global is the useful one.
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \d+|Unsupported class \S+", str(err))
        what = f"it asks for {found.group(1) or found.group(0)}" if found else "it holds more than tensors"
        raise ConfigError(
            f"{key}: {path} holds pickled Python objects, not only tensors, and is refused ({what}; loading it "
            "could run code); use a checkpoint written by vitlab, or re-save its state_dict if you trust its source"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(f"{key}: {path} is not a readable checkpoint ({reason}); was it truncated? use another .ckpt") from None


def check_resume_checkpoint(path: str | Path, module: nn.Module, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint whose network differs from ``module``'s (name, parameter names or shapes)."""
    checkpoint = load_checkpoint(path, key)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by vitlab.train")
    saved_net = (checkpoint.get("hyper_parameters") or {}).get("net") or {}
    wanted_net = (getattr(module, "hparams", None) or {}).get("net") or {}
    saved_name, wanted_name = saved_net.get("name"), wanted_net.get("name")
    if saved_name and wanted_name and saved_name != wanted_name:
        raise ConfigError(
            f"{key}: {path} is a checkpoint of network {saved_name!r}, but model.net.name is {wanted_name!r}; "
            "pick the model config it was trained with, or another checkpoint"
        )
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, unexpected = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(
            f"{key}: {path} does not match the configured {wanted_name or 'model'} ({len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, e.g. {detail}); use the model.net settings it was trained with"
        )
    for name, shape in wanted.items():
        if saved[name] != shape:
            raise ConfigError(
                f"{key}: {path} does not match the configured {wanted_name or 'model'}: {name} is {list(saved[name])} "
                f"in the checkpoint but {list(shape)} here (another num_classes, img_size or width?); "
                "use the data and model.net settings it was trained with"
            )


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a reader (or a restarted run) sees the old file or the new one, never half of one, even
    if the process is killed during ``write``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """The global RNGs (python, numpy, torch CPU and CUDA) as tensors and plain values that a
    weights-only load accepts (numpy's key array is stored as an int64 tensor)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a :func:`capture_rng_state` snapshot."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
