"""Checkpoint files: the one loader, the integrity digest, the fit check, atomic writes, RNG state and
:func:`gather_ranks` (every rank's state, for the one checkpoint rank 0 writes).

Every command that reads a checkpoint (train's resume, evaluate, analyze, predict, export and
:func:`vitlab.load_run`) goes through :func:`load_checkpoint`: the file must exist, load with
``torch.load(weights_only=True)`` (a file that needs more, i.e. pickled Python objects from a tampered
or foreign file, is refused with one line instead of being executed), carry a content digest that
matches it, and hold finite weights. :func:`check_weights_fit` is the one comparison of a
checkpoint's network (name, tensor names and shapes) with a module, so a mismatch is one line naming
the tensor, not a ``load_state_dict`` traceback.

The digest is a SHA-256 over everything a checkpoint holds (tensor bytes, dtypes, shapes and plain
values, in key order), computed when the checkpoint is saved (:class:`DigestCheckpointIO`) and stored
inside it under ``vitlab_digest``. A byte that changes on disk afterwards (bit rot, a bad copy, an
edited file) makes the digest disagree and the file is refused, naming it. A checkpoint without a
digest (written by other code, or one whose digest was deleted) is refused too, unless the
environment variable ``VITLAB_ALLOW_UNSIGNED_CHECKPOINTS=1`` (:data:`ALLOW_UNSIGNED_ENV`) says to
load it.
"""

from __future__ import annotations

import hashlib
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
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from vitlab.compat import upgrade_checkpoint
from vitlab.errors import ConfigError

DIGEST_KEY = "vitlab_digest"
#: The one switch that lets :func:`load_checkpoint` read a checkpoint without a digest: ``=1``.
ALLOW_UNSIGNED_ENV = "VITLAB_ALLOW_UNSIGNED_CHECKPOINTS"


def state_digest(checkpoint: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, leaving out the digest entry itself.

    Tensors contribute their dtype, shape and raw bytes; containers their keys in sorted order;
    everything else its ``repr``. The same contents give the same digest however the file was
    written or loaded (memory-mapped or not)."""
    sha = hashlib.sha256()
    _hash_into(sha, {k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    return sha.hexdigest()


def _hash_into(sha: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        sha.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        if tensor.numel():
            sha.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        sha.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            sha.update(f"{key!r}=".encode())
            _hash_into(sha, value[key])
    elif isinstance(value, list | tuple):
        sha.update(f"{type(value).__name__}{len(value)}:".encode())
        for item in value:
            _hash_into(sha, item)
    else:
        sha.update(f"{type(value).__name__}:{value!r};".encode())


class DigestCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, plus the content digest: stored inside every checkpoint it saves,
    verified on every load (train's resume and the test of the best checkpoint go through it)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        checkpoint = {**checkpoint, DIGEST_KEY: state_digest(checkpoint)}
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = load_checkpoint(path)
        checkpoint.pop(DIGEST_KEY, None)
        return checkpoint


def load_checkpoint(path: str | Path | None, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded weights-only on the CPU (memory-mapped, nothing copied),
    checked against its digest and for non-finite weights; tensors an older vitlab saved under other
    names come under today's (:func:`vitlab.compat.upgrade_checkpoint`).

    A missing file, a file that is not a checkpoint, one whose pickle holds anything beyond tensors
    and plain containers, one without a digest (unless ``VITLAB_ALLOW_UNSIGNED_CHECKPOINTS=1``), one
    whose contents no longer match its digest and one with a NaN or Inf weight each raise one
    :class:`ConfigError` naming ``key`` and the file.
    """
    if path in (None, ""):
        raise ConfigError(f"{key}: no value given; add {key}=<run dir>/checkpoints/<file>.ckpt")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}: no checkpoint file at {path.resolve()}; give a .ckpt from a run's checkpoints/ folder "
            "(or run_dir=<run folder> to continue a run)"
        )
    checkpoint = _read_weights_only(path, key)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by vitlab.train")
    _check_digest(checkpoint, path, key)
    _check_finite(checkpoint["state_dict"], path, key)
    return upgrade_checkpoint(checkpoint)


def _check_archive(path: Path, key: str) -> None:
    """An empty file or one that is no zip archive (what torch.save writes) is named as such, not
    with torch's advice on memory-mapped loading."""
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"{key}: {path} is empty (0 bytes), a write cut off before it began; use another .ckpt")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(16)
        raise ConfigError(
            f"{key}: {path} is not a checkpoint (torch.save writes a zip archive; this file of {size} bytes starts with "
            f"{head!r}, and may be truncated); give a .ckpt written by vitlab.train"
        )


def _read_weights_only(path: Path, key: str) -> Any:
    _check_archive(path, key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        # torch's message spans a dozen lines; the line naming the offending global is the useful one.
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported class \S+", str(err))
        if not found:  # an opcode that no pickler writes: damaged bytes, not a payload
            reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise ConfigError(f"{key}: {path} is damaged (its data.pkl does not unpickle: {reason}); use another .ckpt") from None
        raise ConfigError(
            f"{key}: {path} holds pickled Python objects, not only tensors, and is refused (it asks for "
            f"{found.group(1) or found.group(0)}; loading it could run code); use a checkpoint written by vitlab, or re-save "
            "its state_dict if you trust its source"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(f"{key}: {path} is damaged: its archive is whole but its contents do not load ({reason}); use another .ckpt") from None


def unsigned_allowed() -> bool:
    """Whether ``VITLAB_ALLOW_UNSIGNED_CHECKPOINTS`` says to load checkpoints without a digest."""
    return os.environ.get(ALLOW_UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes")


def _check_digest(checkpoint: dict[str, Any], path: Path, key: str) -> None:
    saved = checkpoint.get(DIGEST_KEY)
    if saved is None:
        if unsigned_allowed():
            return
        raise ConfigError(
            f"{key}: {path} carries no {DIGEST_KEY} (it was not written by vitlab, or its digest was removed), so "
            f"its integrity cannot be checked and it is refused; if you trust its source, set {ALLOW_UNSIGNED_ENV}=1 "
            "to load it"
        )
    if saved != state_digest(checkpoint):
        raise ConfigError(
            f"{key}: {path} fails its integrity check (its contents no longer match the SHA-256 saved with them: "
            "the file changed on disk after it was written); use another checkpoint of the run, e.g. its epoch_*.ckpt"
        )


def _check_finite(state_dict: Any, path: Path, key: str) -> None:
    """Refuse a state_dict with a NaN or Inf in any floating-point tensor, naming the first one."""
    for name, tensor in (state_dict or {}).items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            if not bool(torch.isfinite(tensor).all()):
                kind = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
                raise ConfigError(
                    f"{key}: {path} holds non-finite weights ({name} has {kind} values); the run diverged "
                    "before this checkpoint was saved: use an earlier checkpoint of the run, e.g. its epoch_*.ckpt"
                )


def check_network_name(checkpoint: dict[str, Any], wanted_name: str | None, path: str | Path, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint whose recorded network name is not ``wanted_name`` (when both are known)."""
    saved_name = ((checkpoint.get("hyper_parameters") or {}).get("net") or {}).get("name")
    if saved_name and wanted_name and saved_name != wanted_name:
        raise ConfigError(
            f"{key}: {path} holds weights of {saved_name}, not of model {wanted_name}; "
            f"use model={saved_name} or the checkpoint of a {wanted_name} run"
        )


#: What a checkpoint that does not fit its module is told to do (the training and evaluation commands).
SAME_SETTINGS = "use the model.net and data settings it was trained with (another num_classes, img_size, width or depth?)"


def check_weights_fit(
    checkpoint: dict[str, Any], module: nn.Module, path: str | Path, key: str = "ckpt_path", fix: str = SAME_SETTINGS
) -> None:
    """Refuse a checkpoint whose network differs from ``module``'s: its recorded network name, then
    every tensor's name and shape; the message ends with ``fix``."""
    wanted_name = ((getattr(module, "hparams", None) or {}).get("net") or {}).get("name")
    check_network_name(checkpoint, wanted_name, path, key)
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in wanted if k not in saved]
    unexpected = [k for k in saved if k not in wanted]
    reshaped = [k for k in wanted if k in saved and saved[k] != wanted[k]]
    if missing or unexpected or reshaped:
        if reshaped:
            first = f"{reshaped[0]} is {list(saved[reshaped[0]])} in the checkpoint but {list(wanted[reshaped[0]])} here"
        else:
            first = f"{'missing' if missing else 'unexpected'} {(missing or unexpected)[0]}"
        raise ConfigError(
            f"{key}: the weights in {path} do not fit model {wanted_name or type(module).__name__} ({len(missing)} tensors "
            f"missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape; e.g. {first}); {fix}"
        )


def check_resume_checkpoint(path: str | Path, module: nn.Module, key: str = "ckpt_path") -> None:
    """Refuse, before fitting, a checkpoint that is unreadable, damaged or of another network."""
    check_weights_fit(load_checkpoint(path, key), module, path, key)


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
def gather_ranks(state: Any) -> list[Any]:
    """Every rank's ``state``, in rank order (one process: ``[state]``), for rank 0 to write into
    the checkpoint; each rank later takes its own entry back."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, state)
        return states
    return [state]


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
