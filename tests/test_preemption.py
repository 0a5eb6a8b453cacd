"""Preemption as schedulers send it: SIGTERM to the whole process group (``scancel``, ``timeout``,
``kill -TERM -<pgid>``), loader workers included. The workers leave the signal to the main process,
which saves last.ckpt at the next step boundary (mid-epoch, or after the epoch's validation), exits
128 + the signal and prints a ``resume with run_dir=<folder>`` line that works as printed: for the
default run folder, an explicit ``paths.output_dir`` and a sweep member."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from test_config_errors import COMMON, SYNTHETIC, run_in_process
from test_reliability import FAST, PROCESS_RUN, PROCESS_STEPS_PER_EPOCH, STEPS_PER_EPOCH, _SignalAt, _env, _final, \
    _logged_steps, _weights_equal
from vitlab.callbacks.checkpoint import AtomicModelCheckpoint, Preempted
from vitlab.checkpoint import load_checkpoint
from vitlab.datamodules.synthetic import SyntheticDataModule
from vitlab.datamodules.workers import WorkerInit
from vitlab.runs import LOCK_NAME

PREEMPTION = (signal.SIGTERM, signal.SIGUSR1)


# ----------------------------------------------------------------------------------- loader workers
class _WorkerReport(Dataset):
    """Each item says which process loaded it, whether the preemption signals are held back from that
    process's code there, and what the loader's own worker_init_fn left behind."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        held_back = all(s in blocked or signal.getsignal(s) == signal.SIG_IGN for s in PREEMPTION)
        return torch.tensor([os.getpid(), int(held_back), int(os.environ.get("VITLAB_TEST_WORKER_INIT", -1))])


def _own_init(worker_id: int) -> None:
    os.environ["VITLAB_TEST_WORKER_INIT"] = str(worker_id)


def _send_from_another_process(signum: int, pid: int) -> None:
    """``kill -<signum> <pid>`` from a process other than the worker's parent, as a scheduler sends it."""
    subprocess.run([sys.executable, "-c", f"import os; os.kill({pid}, {int(signum)})"], check=True, timeout=60)


def test_loader_workers_survive_the_preemption_signals_and_end_with_their_loader(one_thread):
    loader = DataLoader(_WorkerReport(), batch_size=1, num_workers=2, persistent_workers=True,
                        worker_init_fn=WorkerInit(PREEMPTION, then=_own_init))
    first = torch.cat(list(loader))
    workers = list(loader._iterator._workers)
    assert sorted(set(first[:, 0].tolist())) == sorted(w.pid for w in workers)
    assert first[:, 1].tolist() == [1] * 8  # the signals are held back in every worker
    assert sorted(set(first[:, 2].tolist())) == [0, 1]  # the loader's own worker_init_fn ran too

    for worker in workers:
        for signum in PREEMPTION:
            _send_from_another_process(signum, worker.pid)
    time.sleep(0.5)
    assert all(worker.is_alive() for worker in workers)
    second = torch.cat(list(loader))  # the same persistent workers serve the next epoch
    assert set(second[:, 0].tolist()) == set(first[:, 0].tolist())

    # A SIGTERM from the main process (how multiprocessing ends a worker that does not stop) still ends it.
    workers[0].terminate()
    workers[0].join(timeout=30)
    assert workers[0].exitcode == 0
    loader._iterator._shutdown_workers()
    assert not any(worker.is_alive() for worker in workers)


def test_the_datamodule_loaders_leave_the_checkpoint_callbacks_signals_to_the_main_process(tmp_path):
    data = SyntheticDataModule(train_size=48, val_size=16, test_size=16, batch_size=8, num_workers=2)
    data.setup()
    callback = AtomicModelCheckpoint(dirpath=tmp_path, preemption_signals=["SIGTERM", "SIGUSR1"])
    data.trainer = SimpleNamespace(callbacks=[callback], global_rank=0)
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
        assert isinstance(loader.worker_init_fn, WorkerInit) and loader.worker_init_fn.signals == PREEMPTION
    data.trainer = SimpleNamespace(callbacks=[AtomicModelCheckpoint(dirpath=tmp_path, preemption_signals=[])], global_rank=0)
    assert data.val_dataloader().worker_init_fn.signals == ()  # preemption handling off: workers keep PyTorch's
    data.num_workers = 0
    assert data.val_dataloader().worker_init_fn is None


# ----------------------------------------------------------------------------------- a second signal
class _SignalWhileSaving(L.Callback):
    """Sends SIGTERM to this process while the checkpoint of ``step`` is being built and written."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = step, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            self.sent += 1


def test_a_second_sigterm_while_saving_is_dropped_and_last_ckpt_resumes_exactly(smoke_cfg, tmp_path, one_thread, monkeypatch):
    from vitlab import training as train_module

    train_module.train(smoke_cfg(*FAST, out="straight"))
    stopped_at = STEPS_PER_EPOCH + 2
    second = _SignalWhileSaving(stopped_at)
    original = train_module._instantiate_group
    monkeypatch.setattr(train_module, "_instantiate_group", lambda group: original(group) + (
        [_SignalAt(epoch=1, batch=1), second] if group is not None and "model_checkpoint" in group else []))
    with pytest.raises(Preempted) as stopped:
        train_module.train(smoke_cfg(*FAST, out="stopped"))
    monkeypatch.setattr(train_module, "_instantiate_group", original)
    assert second.sent == 1 and f"epoch 2, step {stopped_at}" in str(stopped.value)  # the second epoch, counted from 1
    checkpoints = tmp_path / "stopped" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == stopped_at
    assert not list(checkpoints.glob(".*.tmp"))

    train_module.train(smoke_cfg(*FAST, "ckpt_path=last", out="stopped"))
    _weights_equal(load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load_checkpoint(checkpoints / "last.ckpt"))


# ----------------------------------------------------------------------------------- the printed command
class SignalAtStep(L.Callback):
    """Sends SIGTERM to this process as the step after ``step`` optimizer steps starts (so that step is
    finished before the run stops); a run resumed past it is not signalled again."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


SIGNAL_AT_STEP_1 = ["+callbacks.preempt._target_=test_preemption.SignalAtStep", "+callbacks.preempt.step=1"]
# Two epochs of 3 steps (24 training images in batches of 8).
SHORT = [*(a for a in COMMON if not a.startswith(("trainer.limit_train_batches=", "recipe.epochs="))), *SYNTHETIC,
         "recipe.epochs=2", "test=false"]


def _printed_run_dir(code: int, stderr: str) -> str:
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("preempted, resume with run_dir=")]
    assert "(SIGTERM at epoch 1, step 2; saved checkpoints/last.ckpt)" in line, line
    return re.match(r"preempted, resume with (run_dir=\S+) ", line).group(1)


def _resume_as_printed(command: str, cwd: Path, monkeypatch) -> Path:
    """Runs the printed ``run_dir=<folder>`` from another folder; the run ends where it should."""
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, stderr = run_in_process([command])
    assert code == 0, stderr[-3000:]
    run_dir = Path(command.split("=", 1)[1])
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 * 3 and last["epoch"] == 1
    assert (run_dir / "metrics.json").is_file() and not (run_dir / LOCK_NAME).exists()
    assert not list(cwd.iterdir()), "the resume wrote into the folder it was started from"
    return run_dir


def test_the_printed_command_resumes_an_explicit_output_dir(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    command = _printed_run_dir(*run_in_process([*SHORT, *SIGNAL_AT_STEP_1, "paths.output_dir=mine"]))
    assert command == f"run_dir={(tmp_path / 'mine').resolve()}"
    assert load_checkpoint(tmp_path / "mine" / "checkpoints" / "last.ckpt")["global_step"] == 2
    _resume_as_printed(command, tmp_path / "elsewhere", monkeypatch)


def test_the_printed_command_resumes_a_sweep_member(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    command = _printed_run_dir(*run_in_process(["-m", *SHORT, *SIGNAL_AT_STEP_1, "model.net.depth=1"]))
    (member,) = (tmp_path / "multirun").glob("*/*/0_*")
    assert command == f"run_dir={member.resolve()}"
    run_dir = _resume_as_printed(command, tmp_path / "elsewhere", monkeypatch)
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]["net"]["depth"] == 1


# ----------------------------------------------------------------------------------- the process group
# PROCESS_RUN (2 persistent loader workers, 6 steps an epoch) with a validation of 63 batches, long
# enough to signal during it.
GROUP_RUN = [*PROCESS_RUN, "data.train_size=2200", "data.val_size=2008", "trainer.limit_val_batches=1.0"]
VAL_BATCHES = 63  # 2008 images in batches of 32


def _start_own_group(cwd: Path, *args: str) -> subprocess.Popen:
    """``python -m vitlab.train`` in a process group of its own (what a batch job or ``timeout`` is)."""
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "vitlab.train", *args], cwd=cwd, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _end(proc: subprocess.Popen) -> str:
    try:
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return stderr


def _signal_group_when_logged(proc: subprocess.Popen, cwd: Path, step: int) -> Path:
    """SIGTERM to the whole process group as soon as the CSV log shows ``step``; the run folder."""
    runs = cwd / "logs" / "train" / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        run_dir = next(runs.iterdir(), None) if runs.is_dir() else None
        if run_dir is not None and any(logged >= step for logged in _logged_steps(run_dir)):
            os.killpg(proc.pid, signal.SIGTERM)
            return run_dir
        time.sleep(0.02)
    raise AssertionError(f"the run ended before step {step} could be signalled: {_end(proc)[-3000:]}")


def _group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    cwd = tmp_path_factory.mktemp("straight")
    proc = _start_own_group(cwd, *GROUP_RUN)
    stderr = _end(proc)
    assert proc.returncode == 0, stderr[-3000:]
    (run_dir,) = (cwd / "logs" / "train" / "runs").iterdir()
    return _final(run_dir)


def _preempt_and_resume(tmp_path: Path, signal_at_logged_step: int, uninterrupted: tuple[dict, dict]) -> tuple[int, dict]:
    """Starts GROUP_RUN, signals its process group, checks the stop and resumes with the printed command
    (from another folder); the step it stopped at and the checkpoint it saved there."""
    proc = _start_own_group(tmp_path / "run", *GROUP_RUN)
    run_dir = _signal_group_when_logged(proc, tmp_path / "run", signal_at_logged_step)
    stderr = _end(proc)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "is killed by signal" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("preempted")]
    match = re.fullmatch(r"preempted, resume with (run_dir=\S+) \(SIGTERM at epoch \d+, step (\d+); saved checkpoints/last.ckpt\)", line)
    assert match and match.group(1) == f"run_dir={run_dir.resolve()}", line
    deadline = time.monotonic() + 30  # the loader workers end with the run
    while not _group_is_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_is_gone(proc.pid), "loader workers outlived the preempted run"
    stopped_at, saved = int(match.group(2)), load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == stopped_at and not (run_dir / "metrics.json").exists()

    resumed = _start_own_group(tmp_path / "elsewhere", match.group(1))
    stderr = _end(resumed)
    assert resumed.returncode == 0, stderr[-3000:]
    (expected, reference), (got, final) = uninterrupted, _final(run_dir)
    for key in ("epochs", "global_step", "val/top1_best", "test/top1", "test/loss"):
        assert got[key] == expected[key], (key, got[key], expected[key])
    _weights_equal(reference, final)
    assert not list(run_dir.glob("checkpoints/.*.tmp")) and not (run_dir / LOCK_NAME).exists()
    return stopped_at, saved


@pytest.mark.slow
def test_sigterm_to_the_process_group_mid_epoch_saves_exits_143_and_resumes_bit_identically(tmp_path, uninterrupted):
    # Logged steps are 0-based: step 7 is the second step of the second epoch.
    stopped_at, saved = _preempt_and_resume(tmp_path, PROCESS_STEPS_PER_EPOCH + 1, uninterrupted)
    assert PROCESS_STEPS_PER_EPOCH < stopped_at < 2 * PROCESS_STEPS_PER_EPOCH
    assert saved["SyntheticDataModule"]["epoch_done"] is False


@pytest.mark.slow
def test_sigterm_to_the_process_group_during_validation_saves_at_the_epochs_end(tmp_path, uninterrupted):
    """The signal comes once the first epoch's last step is logged, while its validation runs: the
    validation finishes, last.ckpt is the epoch's own (validated, best score recorded), and the resume
    starts the next epoch without validating again."""
    stopped_at, saved = _preempt_and_resume(tmp_path, PROCESS_STEPS_PER_EPOCH - 1, uninterrupted)
    assert stopped_at == PROCESS_STEPS_PER_EPOCH
    assert saved["SyntheticDataModule"]["epoch_done"] is True
    validated = saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["current"]["completed"]
    assert validated == VAL_BATCHES  # the whole validation ran before the save
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("AtomicModelCheckpoint")]
    assert state["best_model_score"] is not None
