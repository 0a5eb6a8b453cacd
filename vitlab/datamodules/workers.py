"""Loader workers leave the preemption signals to the main process: :class:`WorkerInit`.

A scheduler stops a job by signalling its whole process group (``scancel``, ``timeout``, ``kill -TERM
-<pgid>``), loader workers included. PyTorch's workers end on SIGTERM (and SIGUSR1's default action
ends a process too), after which the main process's next fetch fails with ``DataLoader worker (pid …)
is killed by signal: Terminated`` before the checkpoint callback could save. :class:`WorkerInit`, the
``worker_init_fn`` of vitlab's loaders, has each worker ignore the signals the run's callbacks handle
in the main process (``callbacks.model_checkpoint.preemption_signals``), except a SIGTERM from the
main process itself: that is how ``multiprocessing`` ends a worker that did not stop when asked, and
it still ends the worker. The main process saves at the next step boundary and stops; the workers
then end with their loader, or, when the main process is gone, through PyTorch's watchdog.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from lightning.fabric.utilities.seed import pl_worker_init_function


class WorkerInit:
    """The ``worker_init_fn`` of vitlab's loaders: leaves ``signals`` to the main process, then runs
    ``then(worker_id)`` (a loader's own ``worker_init_fn``), or, when there is none, what Lightning
    would have added in its place (``seed_everything(workers=True)`` seeds each worker from its id and
    ``rank``). Picklable, so it also works with the ``spawn`` and ``forkserver`` start methods."""

    def __init__(self, signals: Iterable[int] = (), then: Callable[[int], Any] | None = None, rank: int = 0) -> None:
        self.signals = tuple(int(s) for s in signals)
        self.then = then
        self.rank = rank
        self.main_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        leave_to_main_process(self.signals, self.main_pid)
        if self.then is not None:
            self.then(worker_id)
        elif int(os.environ.get("PL_SEED_WORKERS", 0)):
            pl_worker_init_function(worker_id, rank=self.rank)


def leave_to_main_process(signals: Iterable[int], main_pid: int) -> None:
    """In a loader worker: ``signals`` no longer reach this process's code. They are blocked and taken
    by a thread that drops them, except a SIGTERM sent by ``main_pid`` (or this process's parent),
    which ends the worker at once as PyTorch's own worker handler does. Where a thread cannot wait for
    signals (no ``sigwaitinfo``), they are ignored outright."""
    signums = set(signals)
    if not signums:
        return
    if not hasattr(signal, "sigwaitinfo"):
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)  # threads started later inherit the mask
    threading.Thread(target=_drop_signals, args=(signums, main_pid), name="vitlab-worker-signals", daemon=True).start()


def _drop_signals(signums: set[int], main_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo(signums)
        if info.si_signo == signal.SIGTERM and info.si_pid in (main_pid, os.getppid()):
            os._exit(0)


def main_process_signals(trainer: Any) -> tuple[int, ...]:
    """The signals ``trainer``'s callbacks handle in the main process (``handled_signals()``, the
    checkpoint callback's preemption signals); none without a trainer."""
    found: list[int] = []
    for callback in getattr(trainer, "callbacks", None) or ():
        handled = getattr(callback, "handled_signals", None)
        if callable(handled):
            found += [int(s) for s in handled() if int(s) not in found]
    return tuple(found)
