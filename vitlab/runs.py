"""What evaluate and analyze share: a run's saved config, its checkpoint (weights only) and its module.

A run dir (``paths.output_dir`` of ``vitlab.train``) holds ``checkpoints/*.ckpt`` and the resolved
``config.yaml``; :func:`load_run` finds the config beside a checkpoint, rebuilds the family module
from it and loads the weights through :func:`vitlab.checkpoint.load_checkpoint` (weights-only, digest checked). A checkpoint without a config
beside it needs ``model=<config>`` on the command line. Every failure is one :class:`ConfigError` line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.compat import upgrade_run_config
from vitlab.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".vitlab.lock"  # in a run folder while a run writes into it: "<pid>@<host>"


@dataclass
class LoadedRun:
    """A module rebuilt from a checkpoint, with where it came from."""

    module: Any  # the family LightningModule, in eval mode
    ckpt_path: Path
    run_dir: Path
    config: DictConfig | None  # the run's saved config.yaml, when there is one
    model_name: str


def run_dir_of(ckpt_path: Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; a checkpoint elsewhere -> its own folder."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def find_checkpoint(path: str | Path, key: str = "run") -> Path:
    """A run folder -> its best checkpoint (else ``last.ckpt``); a ``.ckpt`` file -> itself. A path
    that is neither is one :class:`ConfigError` naming ``key``."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise ConfigError(f"{key}: {path.resolve()} is neither a .ckpt file nor a run folder with checkpoints/; give one of them")
    best = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise ConfigError(f"{key}: {folder.resolve()} holds no .ckpt file; has the run saved a checkpoint yet?")


def read_run_config(run_dir: Path) -> DictConfig | None:
    """The run's saved ``config.yaml``, an older run's read as today's (:mod:`vitlab.compat`), its
    classes checked (:func:`check_run_targets`)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    config = upgrade_run_config(OmegaConf.load(saved))
    check_run_targets(config, saved)
    return config


def check_run_targets(config: DictConfig, saved: Path) -> None:
    """Refuse a run config whose ``model`` / ``data`` ``_target_`` (what loading a run builds) is not
    a LightningModule / LightningDataModule class, or whose ``data`` holds another ``_target_``: a
    config.yaml from elsewhere could otherwise name any callable (``os.system``) for Hydra to call."""
    import lightning as L
    from hydra.utils import get_class

    for key, base in (("model", L.LightningModule), ("data", L.LightningDataModule)):
        node = OmegaConf.to_container(config[key], resolve=False) if key in config else {}
        target = node.get("_target_") if isinstance(node, dict) else None
        nested = [] if key == "model" else [f"{key}.{path}" for path in _nested_targets(node)]
        try:
            cls = get_class(target) if isinstance(target, str) else None
        except (ImportError, ValueError, AttributeError):
            cls = None
        if key in config and (cls is None or not issubclass(cls, base) or nested):
            what = f"{nested[0]}._target_" if nested else f"{key}._target_ {target!r}"
            raise ConfigError(
                f"ckpt_path: {saved} names {what}, which is not a {base.__name__} class that loading a run builds, "
                "and is refused (loading it could run code); restore the run's own config.yaml, or give model=<config>"
            )


def _nested_targets(node: object, path: str = "") -> list[str]:
    """The paths of the ``_target_`` keys below the top of ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for name, value in items:
        inner = f"{path}.{name}" if path else str(name)
        if isinstance(value, dict) and "_target_" in value:
            found.append(inner)
        found += _nested_targets(value, inner)
    return found


def load_run(ckpt_path: str | Path | None, model_node: DictConfig | None = None) -> LoadedRun:
    """Rebuild the module of ``ckpt_path`` and load its weights.

    ``model_node`` (a resolved ``model`` config, e.g. from ``model=...`` on the command line) is
    used instead of the run's saved one. The checkpoint must hold weights of that model: its recorded
    network name and every tensor's name and shape must match, or the message says which model it is.
    """
    from vitlab.checkpoint import check_network_name, check_weights_fit, load_checkpoint  # torch: loaded with a run
    from vitlab.instantiate import build_module

    ckpt = load_checkpoint(ckpt_path)
    path = Path(str(ckpt_path)).expanduser()
    run_dir = run_dir_of(path)
    config = read_run_config(run_dir)
    if model_node is None:
        if config is None:
            raise ConfigError(
                f"ckpt_path: no config.yaml in {run_dir.resolve()} (the checkpoint's run dir); "
                "give model=<the run's model config> on the command line"
            )
        model_node = config.model
    saved_hparams = ckpt.get("hyper_parameters") or {}
    wanted = model_node.net.name
    check_network_name(ckpt, wanted, path)  # before building a model that could not fit anyway
    recipe = OmegaConf.to_container(config.recipe, resolve=True) if config is not None else saved_hparams.get("recipe")
    node = OmegaConf.merge(model_node, {"compile": False})
    module = build_module(node, recipe=recipe)
    check_weights_fit(ckpt, module, path)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return LoadedRun(module=module, ckpt_path=path, run_dir=run_dir, config=config, model_name=wanted)


def prepare_output_dir(
    path: Path, names: list[str], overwrite: bool, key: str = "out_dir", how: str = "give another out_dir=<folder> or overwrite=true"
) -> Path:
    """``path`` created; if it already holds one of ``names`` and ``overwrite`` is off, a ConfigError
    naming ``key`` and ``how`` to get past it (a Hydra command's keys by default; vitlab.report passes
    its flags): results already written are never replaced silently."""
    present = [n for n in names if (path / n).exists()]
    if present and not overwrite:
        raise ConfigError(f"{key}: {path.resolve()} already holds {present[0]}; {how}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}: cannot create {path} ({err.strerror}); give {key} a folder that can be written") from None
    return path


def check_folder_can_be_made(target: Path, key: str, folder_itself: bool, noun: str = "run folder", fix: str | None = None) -> None:
    """``target`` (``folder_itself``), or a folder inside it, can be created: no part of it is a file,
    no name is longer than the file system allows, and its nearest existing folder takes a new folder.
    The error names ``key``, the ``noun`` (what the folder is for) and ``fix``."""
    what = f"cannot create the {noun} {target}" if folder_itself else f"cannot create {noun}s under {target}"
    fix = fix or f"give {key}=<a writable folder>"
    existing = target.absolute()
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {what}: {existing} is a file, not a folder; {fix}")
    longest = max((len(part.encode()) for part in target.absolute().parts), default=0)
    limit = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if longest > limit:
        raise ConfigError(f"{key}: {what}: a folder name of {longest} bytes is longer than the {limit} the file system allows; {fix}")
    try:
        probe = tempfile.mkdtemp(prefix=".vitlab-write-check-", dir=existing)
    except OSError as err:
        raise ConfigError(f"{key}: {what}: {existing} is not writable ({err.strerror}); {fix}") from None
    os.rmdir(probe)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


# ----------------------------------------------------------------------------------- run folder lock
def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock, as ``"pid N"`` (or ``"pid N on host H"``), if that run is alive;
    None when there is no lock, or its process is gone (a stale lock of a killed run)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    pid_text, _, host = text.partition("@")
    if not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if host and host != socket.gethostname():
        return f"pid {pid} on host {host}"  # cannot be checked from here: assumed alive
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"pid {pid}"


def _refuse_held(folder: Path, holder: str, key: str) -> ConfigError:
    return ConfigError(
        f"{key}: {folder} is in use by a running vitlab run ({holder}, see {LOCK_NAME}); wait for it to end, "
        f"or give another {key}; if that run is gone (another machine), delete {folder / LOCK_NAME}"
    )


def check_not_held(folder: Path, key: str = "run_dir") -> None:
    """Refuse ``folder`` if a live run holds its lock (checked before anything is written there)."""
    holder = lock_holder(folder)
    if holder is not None:
        raise _refuse_held(Path(folder), holder, key)


@contextmanager
def run_lock(folder: Path, key: str = "paths.output_dir") -> Iterator[None]:
    """Hold ``folder``'s lock for the body: a second run into the same folder is refused while this one
    lives; a lock left by a process that is gone (SIGKILL, a crashed node) is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(folder)
            if holder is not None:
                raise _refuse_held(folder, holder, key) from None
            # Stale: move it aside first, so of two runs taking over at once only one succeeds.
            aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            log.info("%s: took over the stale lock of a run that is gone (%s)", folder, aside.read_text().strip())
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as lock:
            lock.write(f"{os.getpid()}@{socket.gethostname()}\n")
        break
    else:
        raise _refuse_held(folder, lock_holder(folder) or "another process", key)
    try:
        yield
    finally:
        try:
            if path.read_text().strip().partition("@")[0] == str(os.getpid()):
                path.unlink()
        except OSError:
            pass


def remove_orphaned_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary checkpoint files (``.<name>.<pid>.tmp``) that a run killed while saving left
    in ``folder/checkpoints``; called while holding the folder's lock, so no writer is using them."""
    removed = []
    for tmp in sorted((Path(folder) / "checkpoints").glob(".*.tmp")):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d temporary checkpoint file(s) left by a killed run: %s", len(removed), ", ".join(p.name for p in removed))
    return removed
