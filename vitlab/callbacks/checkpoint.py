"""ModelCheckpoint that writes atomically, keeps run folders movable and saves on preemption."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from vitlab.checkpoint import atomic_write
from vitlab.errors import ConfigError, StorageError

# The signals a cluster sends before it stops a job: SLURM's SIGTERM (preemption, time limit, scancel)
# and SIGUSR1 (what `sbatch --signal=USR1@<seconds>` and Lightning's SLURM plugin use).
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):  # noqa: N818 - it is an event, not a bug
    """The run stopped on a preemption signal after saving a resumable ``last.ckpt``."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path) -> None:
        # ``epoch`` counts from 1, as checkpoint names, metrics.json and the attention dumps do.
        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, run_dir
        super().__init__(
            f"preempted, resume with run_dir={run_dir} ({signal.Signals(signum).name} at epoch {epoch}, step {step}; "
            "saved checkpoints/last.ckpt)"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, what a shell reports for a process ended by that signal."""
        return 128 + self.signum


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best by the monitored metric, and ``last.ckpt``), plus:

    - **Atomic writes.** A checkpoint is written to a temporary file beside its target, synced to disk
      and renamed over it. A run killed while saving (SIGKILL, a power cut) leaves the previous
      ``last.ckpt`` intact, so ``ckpt_path=last`` always finds a loadable file.
    - **last.ckpt after every epoch** (or validation): Lightning 2.6 rewrites it only when a top-k
      checkpoint was written at the same step, so a run whose score stopped improving would resume
      from the last *improving* epoch.
    - **Movable run folders.** The paths in the callback's saved state (best, last, top-k) are
      relative to the checkpoint folder and are rebased onto wherever the folder is now, so a run
      moved or copied elsewhere resumes in place: its best score is kept and ``last.ckpt`` is
      overwritten, not joined by a ``last-v1.ckpt``.
    - **Preemption.** On one of ``preemption_signals`` (default SIGTERM and SIGUSR1) the run finishes
      the step it is in, saves ``last.ckpt`` at that step (mid-epoch included) and stops with
      :class:`Preempted`, whose message says how to resume; the entry point exits non-zero. Loader
      workers ignore these signals (:meth:`handled_signals`, ``datamodules/workers.py``), so a signal
      sent to the whole process group (``scancel``, ``timeout``) reaches only this handler. A second
      signal while the checkpoint is written is dropped; after the save the previous handlers are
      back, so one during the shutdown that follows ends the process as usual. Inside
      a submitit job (Hydra's SLURM launcher), submitit's own preemption signal is handled the same
      way and then handed to submitit's handler, which requeues the job: the requeued job finds
      ``last.ckpt`` in its folder and continues from it.

    Every rank builds the checkpoint (it may be sharded or need collectives); rank 0 writes it.
    """

    def __init__(self, *args: Any, preemption_signals: list[str] | tuple[str, ...] = PREEMPTION_SIGNALS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.preemption_signals = [_signal_of(name) for name in preemption_signals or ()]
        self._pending_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ last.ckpt every epoch
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
            self._stop_if_preempted(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and not trainer.sanity_checking:
            self._refresh_last(trainer)
            self._stop_if_preempted(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        # Skipped when the parent already saved at this step (it sets _last_global_step_saved).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """``{epoch}`` in a file name counts from 1 (``epoch_001.ckpt`` after the first epoch), as
        metrics.json, the attention dumps and the messages do."""
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            try:
                atomic_write(filepath, lambda tmp: trainer.save_checkpoint(tmp, self.save_weights_only))
            except OSError as err:  # a full disk: the file being replaced stays as it was, no temp file left
                run = Path(filepath).parent.parent
                raise StorageError(
                    f"checkpoint: cannot write {filepath} ({err.strerror or err}); the checkpoints written before are "
                    f"intact: free space in {Path(filepath).parent}, then resume with run_dir={run}"
                ) from None
        else:
            trainer.save_checkpoint(filepath, self.save_weights_only)  # collective; writes nothing here
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    # ------------------------------------------------------------------ movable run folders
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        root = Path(self.dirpath) if self.dirpath else None
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _relative(state.get(key), root)
        state["best_k_models"] = {_relative(path, root): score for path, score in (state.get("best_k_models") or {}).items()}
        state["relative_paths"] = True
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved_root = state.get("dirpath")
        root = Path(self.dirpath) if self.dirpath else None
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = _rebased(state[key], saved_root, root)
        if "best_k_models" in state:
            state["best_k_models"] = {_rebased(p, saved_root, root): s for p, s in state["best_k_models"].items()}
        state["dirpath"] = self.dirpath  # the folder is wherever it is now
        state.pop("relative_paths", None)
        super().load_state_dict(state)

    # ------------------------------------------------------------------ preemption
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        self._install_handlers()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._install_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # A step boundary: the optimizer just stepped. On the epoch's last batch the epoch-end save
        # (after validation) is the boundary instead, so the resumed run does not redo validation.
        epoch_loop = trainer.fit_loop.epoch_loop
        if not epoch_loop._should_accumulate() and not epoch_loop.batch_progress.is_last_batch:
            self._stop_if_preempted(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _install_handlers(self) -> None:
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return
        self._owner_pid = os.getpid()
        for signum in self.handled_signals():
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def handled_signals(self) -> list[int]:
        """The signals this callback handles in the main process: ``preemption_signals``, and inside a
        submitit job submitit's requeue signal. Loader workers ignore them (``datamodules/workers.py``)."""
        signums = list(self.preemption_signals)
        if os.environ.get("SUBMITIT_EXECUTOR"):  # submitit's requeue signal, USR2 unless configured
            submitit_signal = _signal_of(os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
            signums += [] if submitit_signal in signums else [submitit_signal]
        return signums

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked loader worker: the main process stops it when the run stops
        if self._pending_signal is None:
            self._pending_signal = signum
            rank_zero_info(f"{signal.Signals(signum).name} received: saving last.ckpt at the next step boundary, then stopping")

    def _stop_if_preempted(self, trainer: L.Trainer) -> None:
        pending = self._pending_signal is not None
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if not pending:
            return
        signum = self._pending_signal or signal.SIGTERM
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        elif not self.save_last:
            self._save_checkpoint(trainer, str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"))
        run_dir = Path(self.dirpath).resolve().parent
        preempted = Preempted(signum, trainer.current_epoch + 1, trainer.global_step, run_dir)
        previous = self._previous_handlers.get(signum)
        self._restore_handlers()
        if os.environ.get("SUBMITIT_EXECUTOR") and callable(previous) and _is_submitit_handler(previous):
            # submitit requeues the job (scontrol requeue) and exits; say where the run is first.
            rank_zero_info(str(preempted))
            previous(signum, None)
        raise preempted


def _is_submitit_handler(handler: Any) -> bool:
    return type(getattr(handler, "__self__", None)).__module__.startswith("submitit")


def _signal_of(name: str) -> int:
    name = str(name).upper()
    found = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(found, signal.Signals):
        raise ConfigError(f"callbacks.model_checkpoint.preemption_signals: unknown signal {name!r}; use e.g. SIGTERM or SIGUSR1")
    return int(found)


def _relative(path: str | None, root: Path | None) -> str | None:
    if not path or root is None:
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:  # outside the checkpoint folder: kept as it is
        return path


def _rebased(path: str | None, saved_root: str | None, root: Path | None) -> str | None:
    """A saved path made absolute under ``root``: relative ones (this callback's), and absolute ones
    that lay in the folder the checkpoint was saved from (older checkpoints of a moved run)."""
    if not path or root is None:
        return path
    candidate = Path(path)
    if not candidate.is_absolute():
        return str(root / candidate)
    if saved_root:
        try:
            return str(root / candidate.relative_to(saved_root))
        except ValueError:
            pass
    return path
