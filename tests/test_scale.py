"""Scale: DDP on two CPU processes, the SLURM launcher and the Optuna sweeper configs, unique run dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, compose_config
from vitlab.checkpoint import load_checkpoint
from vitlab.config import fresh_dir, to_hardware
from vitlab.errors import ConfigError

SMALL = [
    "data=synthetic", "hardware.num_workers=0", "data.train_size=96", "data.val_size=32", "data.test_size=32",
    "recipe.batch_size=16", "recipe.repeated_aug=1", "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar.kind=tqdm", "paths.log_dir=logs", "model.net.depth=2",
]


def _run(args: list[str], cwd, extra_path: str = "") -> subprocess.CompletedProcess:
    path = [str(ROOT), extra_path, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    return subprocess.run([sys.executable, "-m", "vitlab.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_ddp_on_two_cpu_processes_keeps_the_ranks_in_step(tmp_path):
    reports = tmp_path / "reports"
    done = _run(
        [*SMALL, "hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2", "hardware.sync_batchnorm=false", "recipe.epochs=1", "~logger",
         "trainer.limit_test_batches=1",
         "+callbacks.rank_report._target_=ddp_probe.RankReport", f"+callbacks.rank_report.out_dir={reports}"],
        cwd=tmp_path, extra_path=str(ROOT / "tests" / "helpers"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights_sha256"] == rank1["weights_sha256"]  # gradients were all-reduced every step
    # 64 training images / 16 per step = 4 steps per epoch, each rank taking 8 of the 16.
    assert rank0["global_step"] == rank1["global_step"] == 4 and rank0["train_batches"] == 4
    assert rank0["val_top1"] == rank1["val_top1"]  # metrics synced over the ranks' halves
    assert rank0["initial_seed"] != rank1["initial_seed"]  # each rank draws its own augmentations
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # the second process made no run dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and 0 <= metrics["test/top1"] <= 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["strategy"] == "ddp"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert len(last["rng_states"]) == 2  # both ranks'
    assert set(last["SyntheticDataModule"]) == {"epoch", "samples_done", "epoch_done"}  # where the data stream stands
    assert not last["rng_states"][0]["torch"].equal(last["rng_states"][1]["torch"])
    assert not list(run_dir.glob("**/*.tmp"))


def test_ranks_share_each_epoch_order_without_overlap():
    from vitlab.datamodules import RepeatedAugmentationSampler

    ranks = [RepeatedAugmentationSampler(10, repeats=1, seed=4, num_replicas=3, rank=r) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [list(sampler) for sampler in ranks]
    assert [len(share) for share in shares] == [4, 4, 4]  # 10 padded to 12 by wrapping around
    single = RepeatedAugmentationSampler(10, repeats=1, seed=4)
    single.set_epoch(2)
    order = list(single)
    assert [shares[i % 3][i // 3] for i in range(10)] == order  # rank r takes every 3rd index from r
    assert set().union(*shares) == set(range(10))


def test_ddp_profile_syncs_batchnorm_on_gpus(tmp_path):
    cfg = compose_config(["hardware=ddp", "model=outgrid"], tmp_path)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["strategy"] == "ddp" and trainer["devices"] == 2
    assert trainer["sync_batchnorm"] is torch.cuda.is_available()
    with pytest.raises(ConfigError, match="hardware.sync_batchnorm: SyncBatchNorm runs on GPUs only"):
        to_hardware({**cfg.hardware, "accelerator": "cpu", "precision": "32-true", "sync_batchnorm": True})


def test_slurm_launcher_composes_without_submitting(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(["hydra/launcher=slurm", "hardware=ddp", "hardware.devices=4",
                          "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (4, 4, "gpu")
    assert launcher.timeout_min == 1440 and launcher.max_num_timeout == 3
    plain = compose_config(["hydra/launcher=submitit_slurm"], hydra=True)
    assert plain.hydra.launcher._target_.endswith("SlurmLauncher")


def test_optuna_sweep_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_config(["sweep=optuna_mini_vit"], hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"recipe.optimizer.lr", "recipe.optimizer.weight_decay", "model.net.drop_path_rate"}
    assert cfg.optimized_metric == "val/top1_best" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_optuna_runs_two_trials_and_records_the_best(tmp_path, monkeypatch, one_thread):
    """The sweep through the command line in this process (runpy); the DDP test above is the real process."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from test_config_errors import run_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    code, stderr = run_in_process(["sweep=optuna_mini_vit", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                                   *SMALL, "hardware=cpu", "recipe.epochs=1", "trainer.limit_val_batches=1", "test=false",
                                   "~logger", "hydra.sweep.dir=sweep"])
    assert code == 0, stderr[-4000:]
    trials = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(trials) == 2
    scores = [json.loads(t.read_text())["val/top1_best"] for t in trials]
    lrs = [yaml.safe_load((t.parent / "config.yaml").read_text())["recipe"]["optimizer"]["lr"] for t in trials]
    assert lrs[0] != lrs[1] and all(1e-4 <= lr <= 5e-3 for lr in lrs)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(scores))
    assert set(best["best_params"]) == {"recipe.optimizer.lr", "recipe.optimizer.weight_decay", "model.net.drop_path_rate"}


def test_run_dirs_started_in_the_same_second_differ(tmp_path):
    first, second = fresh_dir(str(tmp_path / "runs" / "2026-01-01_00-00-00")), fresh_dir(str(tmp_path / "runs" / "2026-01-01_00-00-00"))
    assert first != second and second.endswith("_1")
    # Through the config: two compositions whose clock reads the same second.
    a = compose_config([f"paths.log_dir={tmp_path}", "hydra.run.dir='${vitlab.run_dir:${run_dir},%s/same}'" % tmp_path], hydra=True)
    b = compose_config([f"paths.log_dir={tmp_path}", "hydra.run.dir='${vitlab.run_dir:${run_dir},%s/same}'" % tmp_path], hydra=True)
    dir_a, dir_b = a.hydra.run.dir, b.hydra.run.dir
    assert dir_a != dir_b and os.path.isdir(dir_a) and os.path.isdir(dir_b)
    assert a.hydra.run.dir == dir_a  # read again: the same folder, not a third one
