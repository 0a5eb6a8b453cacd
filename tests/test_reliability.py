"""Reliability: exact resume with loader workers (also mid-epoch), preemption that saves, checkpoint
digests, movable run folders, overrides on resume, the run-folder lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from vitlab.callbacks.checkpoint import Preempted
from vitlab.callbacks.nan_guard import NonFiniteLossError
from conftest import CONF_DIR, ROOT, flip_tensor_byte
from test_config_errors import COMMON, SYNTHETIC, run_in_process
from vitlab.checkpoint import ALLOW_UNSIGNED_ENV, DIGEST_KEY, DigestCheckpointIO, load_checkpoint, state_digest
from vitlab.cli import warn_unknown_groups
from vitlab.errors import ConfigError
from vitlab.optim import WarmupCosine
from vitlab.runs import LOCK_NAME, lock_holder, run_lock

# Three epochs of 3 steps (96 images - 16 held out = 80 = 5 batches of 16; 3 per epoch with the limit)
# with the seed recipe's randomness on: CutMix (numpy), AutoAugment and erasing (torch), dropout.
FAST = ("data.train_size=96", "data.val_size=16", "recipe.batch_size=16", "recipe.epochs=3", "recipe.schedule.warmup_epochs=1",
        "model.net.depth=1", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=1", "test=false",
        "trainer.deterministic=true")
STEPS_PER_EPOCH = 5


def _weights_equal(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, weight in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], weight), name


class _SignalAt(L.Callback):
    """Sends ``signum`` to this process after training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def test_preempted_mid_epoch_with_two_persistent_workers_resumes_bit_identically(smoke_cfg, tmp_path, one_thread, monkeypatch):
    """The fast in-process variant of the kill tests: SIGTERM arrives during epoch 2's second batch, the
    run saves last.ckpt at that step and stops; the resume (2 persistent loader workers both times)
    ends with the weights and RNG state of the uninterrupted run."""
    from vitlab import training as train_module

    workers = ("hardware.num_workers=2", "data.persistent_workers=true")
    handler_before = signal.getsignal(signal.SIGTERM)
    train_module.train(smoke_cfg(*FAST, *workers, out="straight"))

    original = train_module._instantiate_group
    monkeypatch.setattr(train_module, "_instantiate_group", lambda group: original(group) + (
        [_SignalAt(epoch=1, batch=1)] if group is not None and "model_checkpoint" in group else []))
    with pytest.raises(Preempted) as stopped:
        train_module.train(smoke_cfg(*FAST, *workers, out="stopped"))
    monkeypatch.setattr(train_module, "_instantiate_group", original)
    stopped_at = STEPS_PER_EPOCH + 2  # the signal came during batch 1 of the second epoch: that step is finished
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert f"preempted, resume with run_dir={(tmp_path / 'stopped').resolve()}" in str(stopped.value)
    assert f"epoch 2, step {stopped_at}" in str(stopped.value)  # epochs counted from 1
    last = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == stopped_at and last["SyntheticDataModule"] == {"epoch": 1, "samples_done": 2 * 16, "epoch_done": False}
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the run's handlers are gone with it

    train_module.train(smoke_cfg(*FAST, *workers, "ckpt_path=last", out="stopped"))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3 * STEPS_PER_EPOCH
    assert resumed["rng_states"][0]["torch"].equal(straight["rng_states"][0]["torch"])
    _weights_equal(straight, resumed)
    assert not (tmp_path / "stopped" / "checkpoints" / "last-v1.ckpt").exists()


def test_augmentations_do_not_depend_on_the_number_of_workers(smoke_cfg, tmp_path, one_thread):
    """Each sample's augmentation is seeded from (seed, epoch, position): 0 and 2 workers train alike."""
    from vitlab.training import train

    short = (*FAST, "trainer.max_epochs=1")
    train(smoke_cfg(*short, "hardware.num_workers=0", out="w0"))
    train(smoke_cfg(*short, "hardware.num_workers=2", "data.persistent_workers=false", out="w2"))
    _weights_equal(load_checkpoint(tmp_path / "w0" / "checkpoints" / "last.ckpt"),
                   load_checkpoint(tmp_path / "w2" / "checkpoints" / "last.ckpt"))


# ----------------------------------------------------------------------------------- SLURM and submitit
def test_under_slurm_lightning_does_not_requeue_on_its_own(monkeypatch):
    """Lightning's SLURM plugin would catch SIGUSR1, write hpc_ckpt_*.ckpt (which a resume never reads)
    and requeue the job itself, a second time when submitit requeues too: train's plugins turn it off."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from vitlab.training import _plugins

    assert [type(p).__name__ for p in _plugins()] == ["DigestCheckpointIO"]
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "vitlab", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "n1"}.items():
        monkeypatch.setenv(name, value)
    if not SLURMEnvironment.detect():
        pytest.skip("Lightning does not see these variables as a SLURM job here")
    (slurm,) = [p for p in _plugins() if isinstance(p, SLURMEnvironment)]
    assert slurm.auto_requeue is False


class _SubmititLikeHandler:
    """Stands for submitit's SignalHandler: records what the run had saved when the signal reached it,
    then exits as submitit does after requeueing the job."""

    __module__ = "submitit.core.job_environment"

    def __init__(self, last: Path) -> None:
        self.last, self.seen = last, []

    def checkpoint_and_try_requeue(self, signum, frame=None):
        self.seen.append((signum, load_checkpoint(self.last)["global_step"]))
        raise SystemExit(-1)


def test_inside_a_submitit_job_its_signal_saves_first_then_reaches_submitit(smoke_cfg, tmp_path, one_thread, monkeypatch):
    from vitlab import training as train_module

    handler = _SubmititLikeHandler(tmp_path / "job" / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)  # what submitit installs
    original = train_module._instantiate_group
    monkeypatch.setattr(train_module, "_instantiate_group", lambda group: original(group) + (
        [_SignalAt(epoch=1, batch=1, signum=signal.SIGUSR2)] if group is not None and "model_checkpoint" in group else []))
    try:
        with pytest.raises(SystemExit):
            train_module.train(smoke_cfg(*FAST, out="job"))
        assert handler.seen == [(signal.SIGUSR2, STEPS_PER_EPOCH + 2)]  # last.ckpt was already at the step it stopped
        assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ----------------------------------------------------------------------------------- digest
def test_digest_is_saved_inside_and_a_flipped_byte_in_tensor_data_is_refused(tmp_path):
    state = {"state_dict": {"net.w": torch.arange(4096, dtype=torch.float32), "net.b": torch.ones(3)}, "epoch": 2,
             "loops": {"x": [1, 2.5, "a"]}}
    path = tmp_path / "last.ckpt"
    DigestCheckpointIO().save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded[DIGEST_KEY] == state_digest(state) == state_digest(loaded)
    assert torch.equal(DigestCheckpointIO().load_checkpoint(path)["state_dict"]["net.w"], state["state_dict"]["net.w"])

    flip_tensor_byte(path)
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"ckpt_path: {path} fails its integrity check") and "\n" not in message
    # The flip is real: without the digest, the altered weights would load silently.
    altered = torch.load(path, weights_only=True)["state_dict"]["net.w"]
    assert not torch.equal(altered, state["state_dict"]["net.w"])


def test_a_flipped_byte_in_data_pkl_is_called_damaged_not_a_payload(tmp_path):
    """The pickle inside a checkpoint with one byte changed is damage, named as such; only a pickle
    that asks for a global is called one that could run code."""
    path = tmp_path / "last.ckpt"
    DigestCheckpointIO().save_checkpoint({"state_dict": {"net.w": torch.ones(8)}, "epoch": 2, "loops": {"x": [1, "a"]}}, path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    original = path.read_bytes()
    messages = []
    for offset in range(2, info.compress_size - 1, 7):
        damaged = bytearray(original)
        damaged[start + offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            load_checkpoint(path)
        except ConfigError as err:
            messages.append(str(err))
    assert messages and all("\n" not in m for m in messages)
    assert not any("pickled Python objects" in m for m in messages), [m for m in messages if "pickled" in m][:3]
    assert any(" is damaged" in m for m in messages)


def test_a_checkpoint_without_a_digest_loads_only_with_the_switch(tmp_path, monkeypatch):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV, raising=False)
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        f"ckpt_path: {path} carries no vitlab_digest (it was not written by vitlab, or its digest was removed), so its "
        "integrity cannot be checked and it is refused; if you trust its source, set VITLAB_ALLOW_UNSIGNED_CHECKPOINTS=1 "
        "to load it"
    )
    monkeypatch.setenv(ALLOW_UNSIGNED_ENV, "1")
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(2))


# ----------------------------------------------------------------------------------- moved run folders
def test_a_moved_run_folder_resumes_in_place_keeps_its_best_and_names_itself(smoke_cfg, tmp_path, one_thread):
    from vitlab.training import train

    train(smoke_cfg(*FAST, "trainer.max_epochs=2", out="here"))
    before = load_checkpoint(tmp_path / "here" / "checkpoints" / "last.ckpt")
    (callback_key,) = [k for k in before["callbacks"] if k.startswith("AtomicModelCheckpoint")]
    saved = before["callbacks"][callback_key]
    assert not Path(saved["best_model_path"]).is_absolute() and not Path(saved["last_model_path"]).is_absolute()
    shutil.move(tmp_path / "here", tmp_path / "moved")
    orphan = tmp_path / "moved" / "checkpoints" / ".last.ckpt.99999.tmp"  # left by a run killed while saving
    orphan.write_bytes(b"half a checkpoint")

    train(smoke_cfg(*FAST, "ckpt_path=last", out="moved"))
    names = sorted(p.name for p in (tmp_path / "moved" / "checkpoints").iterdir())
    assert "last-v1.ckpt" not in names and not orphan.exists(), names
    after = load_checkpoint(tmp_path / "moved" / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 3 * STEPS_PER_EPOCH
    state = after["callbacks"][callback_key]
    assert state["best_model_score"] >= saved["best_model_score"]  # the best score was kept, not reset
    assert (tmp_path / "moved" / "checkpoints" / state["best_model_path"]).is_file()
    assert after["best_val_top1"] >= before["best_val_top1"]

    # A NaN after the move names the checkpoint in the folder as it is now.
    with pytest.raises(NonFiniteLossError) as stopped:
        train(smoke_cfg(*FAST, "ckpt_path=last", "recipe.epochs=4", "recipe.optimizer.lr=1e30", out="moved"))
    assert f"the last good checkpoint is {tmp_path / 'moved' / 'checkpoints' / 'last.ckpt'}" in str(stopped.value)


# ----------------------------------------------------------------------------------- overrides on resume
def test_a_new_lr_on_resume_is_used_from_the_next_step(smoke_cfg, tmp_path, one_thread):
    from vitlab.training import train

    train(smoke_cfg(*FAST, "trainer.max_epochs=1", out="first"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    two = ("trainer.max_epochs=2", "logger=csv")
    train(smoke_cfg(*FAST, f"ckpt_path={first}", *two, out="same"))
    train(smoke_cfg(*FAST, f"ckpt_path={first}", *two, "recipe.optimizer.lr=0.5", out="new_lr"))
    same = load_checkpoint(tmp_path / "same" / "checkpoints" / "last.ckpt")
    new = load_checkpoint(tmp_path / "new_lr" / "checkpoints" / "last.ckpt")
    assert new["lr_schedulers"][0]["base_lrs"] == [0.5] * len(new["lr_schedulers"][0]["base_lrs"])
    assert same["lr_schedulers"][0]["base_lrs"][0] != 0.5
    schedule = WarmupCosine(**new["lr_schedulers"][0]["lr_lambdas"][0])
    assert new["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.5 * schedule(2 * STEPS_PER_EPOCH))
    # The first step after the resume (step 5) already ran at the new LR; the plain resume did not.
    assert _logged_lr(tmp_path / "new_lr", STEPS_PER_EPOCH) == pytest.approx(0.5 * schedule(STEPS_PER_EPOCH))
    assert _logged_lr(tmp_path / "same", STEPS_PER_EPOCH) == pytest.approx(same["lr_schedulers"][0]["base_lrs"][0] * schedule(STEPS_PER_EPOCH))
    assert any(not torch.equal(same["state_dict"][k], new["state_dict"][k]) for k in same["state_dict"])


def _logged_lr(run_dir: Path, step: int) -> float:
    import csv

    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("train/lr") and int(row["step"]) == step]
    return float(rows[0]["train/lr"])


def _cli_run(tmp_path: Path, *args: str) -> tuple[int, str]:
    return run_in_process([*COMMON, *SYNTHETIC, "paths.log_dir=logs", *args])


def test_resume_overrides_apply_persist_or_are_refused_in_one_line(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = _cli_run(tmp_path, "recipe.epochs=3", "trainer.max_epochs=1")
    assert code == 0, stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()

    code, stderr = run_in_process([f"run_dir={run_dir}", "model.net.embed_dim=48"])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith(f"error: model.net.embed_dim: cannot change when continuing run_dir={run_dir} ("), errors
    assert not list((run_dir / ".hydra").glob("resume_*")), "a refused resume left its overrides behind"
    code, stderr = run_in_process([f"run_dir={run_dir}", "data.num_classes=5"])
    assert code == 2 and "error: data.num_classes: cannot change when continuing" in stderr, stderr[-2000:]

    code, stderr = run_in_process([f"run_dir={run_dir}", "recipe.optimizer.lr=0.01", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["lr_schedulers"][0]["base_lrs"][0] == 0.01
    time.sleep(1.1)  # each resume keeps its overrides in .hydra/resume_<second>/
    code, stderr = run_in_process([f"run_dir={run_dir}", "trainer.max_epochs=3"])  # a later resume keeps the new LR
    assert code == 0, stderr[-2000:]
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["lr_schedulers"][0]["base_lrs"][0] == 0.01 and last["epoch"] == 2


# ----------------------------------------------------------------------------------- lock
def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path, smoke_cfg, one_thread):
    from vitlab.training import train

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / LOCK_NAME).write_text(f"{holder.pid}@{socket.gethostname()}\n")
        assert lock_holder(folder) == f"pid {holder.pid}"
        with pytest.raises(ConfigError, match=rf"^paths.output_dir: {folder} is in use by a running vitlab run \(pid {holder.pid}"):
            train(smoke_cfg("trainer.limit_train_batches=1", "test=false", out="run"))
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written into it
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
        code, stderr = run_in_process([f"run_dir={folder}"])
        assert code == 2 and stderr.strip().splitlines() == [
            f"error: run_dir: {folder} is in use by a running vitlab run (pid {holder.pid}, see {LOCK_NAME}); wait for it to "
            f"end, or give another run_dir; if that run is gone (another machine), delete {folder / LOCK_NAME}"]
        assert not list((folder / ".hydra").glob("resume_*"))
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(folder) is None  # its process is gone: stale
    with run_lock(folder):
        assert (folder / LOCK_NAME).read_text().startswith(f"{os.getpid()}@")
    assert not (folder / LOCK_NAME).exists()


# ----------------------------------------------------------------------------------- command line
def test_an_unknown_plus_group_gets_a_warning_naming_the_groups(capsys):
    warn_unknown_groups(["+nonexistent_group=foo", "model.net.depth=2", "+experiment=cifar10_mini_vit", "seed=1"], CONF_DIR)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: +nonexistent_group=foo: 'nonexistent_group' is not a config group")
    assert all(f"{group}," in lines[0] for group in ("callbacks", "data", "experiment", "hardware", "model", "protocol", "recipe"))


def test_a_run_dir_that_is_not_a_run_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").mkdir()
    code, stderr = run_in_process(["run_dir=plain"])
    assert code == 2 and stderr.strip().splitlines()[0].startswith(
        f"error: run_dir: {tmp_path / 'plain'} holds no .hydra/overrides.yaml, so it is not the folder of a vitlab run")
    assert not list((tmp_path / "plain").iterdir())


# ----------------------------------------------------------------------------------- real processes
# Three epochs of 6 steps, 2 persistent loader workers, deterministic kernels, one thread.
PROCESS_RUN = [
    "data=synthetic", "hardware=cpu", "hardware.num_workers=2", "data.persistent_workers=true", "data.train_size=208",
    "data.val_size=16", "data.test_size=32", "recipe.batch_size=32", "recipe.epochs=3", "recipe.repeated_aug=1",
    "recipe.schedule.warmup_epochs=1", "model.net.depth=2", "trainer.deterministic=true", "trainer.log_every_n_steps=2",
    "trainer.limit_val_batches=1", "callbacks.progress_bar.kind=tqdm", "logger=csv", "paths.log_dir=logs",
    "+logger.csv.flush_logs_every_n_steps=1",  # each logged step reaches metrics.csv at once
]
PROCESS_STEPS_PER_EPOCH = 6


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "vitlab.train", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def _logged_steps(run_dir: Path) -> list[int]:
    rows = [line.split(",") for path in run_dir.glob("csv/version_*/metrics.csv") for line in path.read_text().splitlines()]
    if not rows:
        return []
    column = rows[0].index("step") if "step" in rows[0] else None
    return [int(row[column]) for row in rows[1:] if column is not None and len(row) > column and row[column].isdigit()]


def _signal_in_epoch_2(proc: subprocess.Popen, cwd: Path, signum: int) -> Path:
    """Wait for the first epoch's checkpoint, then for a step of the second epoch in the CSV log, then
    signal: mid-epoch on a fast CPU and a slow one alike (a fixed sleep overshot the epoch on a fast one)."""
    runs = cwd / "logs" / "train" / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        last = next(runs.glob("*/checkpoints/last.ckpt"), None) if runs.is_dir() else None
        if last is not None and any(step > PROCESS_STEPS_PER_EPOCH for step in _logged_steps(last.parent.parent)):
            proc.send_signal(signum)
            return last.parent.parent
        time.sleep(0.02)
    raise AssertionError("the run ended before it could be signalled")


def _final(run_dir: Path) -> tuple[dict, dict]:
    return json.loads((run_dir / "metrics.json").read_text()), load_checkpoint(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigkill_and_sigterm_in_epoch_2_with_persistent_workers_resume_bit_identically(tmp_path):
    straight = _start(tmp_path / "straight", *PROCESS_RUN)
    _finish(straight)
    (straight_dir,) = (tmp_path / "straight" / "logs" / "train" / "runs").iterdir()
    expected, reference = _final(straight_dir)

    killed = _start(tmp_path / "killed", *PROCESS_RUN)
    killed_dir = _signal_in_epoch_2(killed, tmp_path / "killed", signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(killed_dir / "checkpoints" / "last.ckpt")["epoch"] == 0  # killed inside epoch 2
    assert (killed_dir / LOCK_NAME).is_file()  # stale: the resume takes it over

    termed = _start(tmp_path / "termed", *PROCESS_RUN)
    termed_dir = _signal_in_epoch_2(termed, tmp_path / "termed", signal.SIGTERM)
    _, stderr = termed.communicate(timeout=120)
    assert termed.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("preempted")]
    assert line.startswith(f"preempted, resume with run_dir={termed_dir.resolve()} (SIGTERM at epoch 2, step ")
    stopped_at = int(line.split("step ")[1].split(";")[0])
    saved = load_checkpoint(termed_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == stopped_at and PROCESS_STEPS_PER_EPOCH < stopped_at < 2 * PROCESS_STEPS_PER_EPOCH
    assert not (termed_dir / "metrics.json").exists()

    for run_dir, cwd in ((killed_dir, tmp_path / "killed"), (termed_dir, tmp_path / "termed")):
        _finish(_start(cwd, f"run_dir={run_dir}"))
        got, final = _final(run_dir)
        for key in ("epochs", "global_step", "val/top1_best", "test/top1", "test/top5", "test/loss"):
            assert got[key] == expected[key], (run_dir, key, got[key], expected[key])
        assert final["global_step"] == reference["global_step"] == 3 * PROCESS_STEPS_PER_EPOCH
        _weights_equal(reference, final)
        assert not list(run_dir.glob("checkpoints/.*.tmp")) and not (run_dir / LOCK_NAME).exists()


def test_an_explicit_output_dir_is_the_run_folder_and_run_dir_continues_it(tmp_path, monkeypatch, one_thread):
    """``paths.output_dir=<folder>`` puts Hydra's record there too, so the resume command a preempted
    run prints (``run_dir=<paths.output_dir>``) works as printed, also from another folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([*COMMON, *SYNTHETIC, "recipe.epochs=2", "trainer.max_epochs=1", "test=false", "paths.output_dir=mine"])
    assert code == 0, stderr[-2000:]
    assert (tmp_path / "mine" / ".hydra" / "overrides.yaml").is_file() and (tmp_path / "mine" / "train.log").is_file()
    assert not (tmp_path / "logs").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stderr = run_in_process([f"run_dir={tmp_path / 'mine'}", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]
    assert json.loads((tmp_path / "mine" / "metrics.json").read_text())["epochs"] == 2
    assert not list(elsewhere.iterdir())


def test_a_run_resumed_after_its_last_epoch_reports_the_same_keys(tmp_path, monkeypatch, one_thread):
    """Killed between its last epoch and metrics.json (kill -9 while testing), a run resumed from
    last.ckpt trains nothing more; its metrics.json still holds every key of an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([*COMMON, *SYNTHETIC, "paths.output_dir=run"])
    assert code == 0, stderr[-2000:]
    whole = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed while testing
    code, stderr = run_in_process(["run_dir=run"])
    assert code == 0, stderr[-2000:]
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(resumed) == sorted(whole)
    for key in ("val/images", "train/images_per_s", "val/images_per_s", "val/top1_best", "epochs", "global_step"):
        assert resumed[key] == whole[key], key


def test_a_hand_edited_config_yaml_is_refused_on_resume_not_rewritten(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([*COMMON, *SYNTHETIC, "recipe.epochs=2", "trainer.max_epochs=1", "test=false", "paths.output_dir=run"])
    assert code == 0, stderr[-2000:]
    saved = tmp_path / "run" / "config.yaml"
    original = saved.read_text()
    lr = yaml.safe_load(original)["recipe"]["optimizer"]["lr"]
    saved.write_text(original.replace(f"lr: {lr}", "lr: 0.5", 1))
    code, stderr = run_in_process(["run_dir=run", "trainer.max_epochs=2"])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith(f"error: config.yaml: recipe.optimizer.lr is 0.5 in {Path('run') / 'config.yaml'} but the run's "
                                f"recorded overrides give {lr}; a run resumes from its overrides: change a setting with run_dir=run "
                                "recipe.optimizer.lr=<value>"), errors
    assert saved.read_text() != original and not list((tmp_path / "run" / ".hydra").glob("resume_*"))  # left as it was
    saved.write_text(original)
    code, stderr = run_in_process(["run_dir=run", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]


def test_ckpt_path_alone_continues_the_run_it_belongs_to(tmp_path, monkeypatch, one_thread):
    """The template's habit: ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes that run with its own
    config (synthetic data here), not a fresh default config that would refuse the checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, stderr = run_in_process([*COMMON, *SYNTHETIC, "recipe.epochs=2", "trainer.max_epochs=1", "test=false", "paths.output_dir=run"])
    assert code == 0, stderr[-2000:]
    code, stderr = run_in_process(["ckpt_path=run/checkpoints/last.ckpt", "trainer.max_epochs=2"])
    assert code == 0, stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["data"] == "synthetic"
    assert list((tmp_path / "run" / ".hydra").glob("resume_*/overrides.yaml")) and not (tmp_path / "logs").exists()


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_checkpoints_before(tmp_path, monkeypatch, one_thread):
    """ENOSPC in the middle of writing the second epoch's checkpoint: one line naming the file, exit 2,
    epoch 1's last.ckpt whole and loadable, no temporary file left."""
    import vitlab.callbacks.checkpoint as checkpoint_callback
    from vitlab.checkpoint import atomic_write

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    saves = []

    def disk_fills_up(path, write):
        saves.append(path)
        if len(saves) <= 2:  # epoch 1's best and last
            return atomic_write(path, write)

        def half_then_full(tmp):
            Path(tmp).write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")

        return atomic_write(path, half_then_full)

    monkeypatch.setattr(checkpoint_callback, "atomic_write", disk_fills_up)
    code, stderr = run_in_process([*COMMON, *SYNTHETIC, "recipe.epochs=2", "test=false", "paths.output_dir=run"])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert errors[0].startswith(f"error: checkpoint: cannot write {folder}/") and "(No space left on device); the checkpoints " \
        f"written before are intact: free space in {folder}, then resume with run_dir={tmp_path / 'run'}" in errors[0], errors
    assert load_checkpoint(folder / "last.ckpt")["epoch"] == 0  # epoch 1's, whole
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "run" / "metrics.json").exists()
