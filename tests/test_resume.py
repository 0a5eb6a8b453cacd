"""Crash-safe resume: atomic checkpoint writes, and a run killed with SIGKILL that continues exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from vitlab.checkpoint import atomic_write, capture_rng_state, load_checkpoint, restore_rng_state

# Four short epochs of a 2-block Mini-ViT with the seed recipe's randomness left on (CutMix through
# numpy, AutoAugment and random erasing through torch, dropout), deterministic kernels, one thread.
RUN = [
    "data=synthetic", "hardware=cpu", "hardware.num_workers=0", "data.train_size=432", "data.val_size=48",
    "data.test_size=64", "recipe.batch_size=16", "recipe.epochs=4", "recipe.repeated_aug=1",
    "recipe.schedule.warmup_epochs=1", "model.net.depth=2", "trainer.deterministic=true",
    "trainer.log_every_n_steps=5", "callbacks.progress_bar.kind=tqdm", "logger=csv", "paths.log_dir=logs",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitlab.train", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]


def _saved_epoch(ckpt: Path) -> int | None:
    if not ckpt.is_file():
        return None
    return int(load_checkpoint(ckpt)["epoch"])


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path):
    target = tmp_path / "last.ckpt"
    torch.save({"step": 1}, target)

    def dies_half_way(tmp: str) -> None:
        Path(tmp).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # what a kill looks like from the writer's side

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_half_way)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    atomic_write(target, lambda tmp: torch.save({"step": 2}, tmp))
    assert torch.load(target, weights_only=True) == {"step": 2}


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    restore_rng_state(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    """SIGKILL during the third epoch, restart with run_dir=: same steps, LR, data order, RNG, metrics."""
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = _start(tmp_path / "straight", *RUN)
    killed = _start(tmp_path / "killed", *RUN)
    runs = tmp_path / "killed" / "logs" / "train" / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        last = next(runs.glob("*/checkpoints/last.ckpt"), None) if runs.is_dir() else None
        if last is not None and (_saved_epoch(last) or 0) >= 1:  # the 2nd epoch's checkpoint is on disk
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = runs.iterdir()
    assert _saved_epoch(run_dir / "checkpoints" / "last.ckpt") == 1  # killed inside epoch 3
    assert not (run_dir / "metrics.json").exists()

    resumed = _start(tmp_path / "killed", f"run_dir={run_dir}")
    _finish(resumed)
    _finish(straight)
    (straight_dir,) = (tmp_path / "straight" / "logs" / "train" / "runs").iterdir()
    expected = json.loads((straight_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("epochs", "global_step", "val/top1_best", "test/top1", "test/top5", "test/loss"):
        assert got[key] == expected[key], (key, got[key], expected[key])
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(straight_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == reference["global_step"] == expected["global_step"], (final["global_step"], expected)
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == reference["optimizer_states"][0]["param_groups"][0]["lr"]
    for name, weight in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name


def test_resume_continues_data_order_and_rng_exactly(smoke_cfg, tmp_path, one_thread):
    """The fast variant of the kill test, in this process: 2 epochs, then a third from last.ckpt, against
    3 epochs straight. CutMix (numpy RNG), AutoAugment and random erasing (torch RNG) and dropout stay
    on, so equal weights need the data order and every RNG stream to continue where they stopped."""
    from vitlab.training import train

    common = ("data.train_size=96", "recipe.epochs=3", "recipe.schedule.warmup_epochs=1", "model.net.depth=1",
              "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=1", "test=false", "trainer.deterministic=true")
    train(smoke_cfg(*common, out="straight"))
    train(smoke_cfg(*common, "trainer.max_epochs=2", out="first"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(smoke_cfg(*common, f"ckpt_path={first}", out="resumed"))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3 * 2  # 96 - 32 held out = 2 batches of 32
    assert resumed["rng_states"][0]["torch"].equal(straight["rng_states"][0]["torch"])
    for name, weight in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_optimizer_state_follows_parameter_names_when_modules_moved(layer_decay):
    """A checkpoint written while vit_cpe's PEG came after the blocks (its parameters now come first,
    with the position module): each parameter gets its own Adam moments back, not its neighbour's."""
    from vitlab.families.classifier import ImageClassifier
    from vitlab.optim import build_optimizer
    from vitlab.resume import in_order

    recipe = {"optimizer": {"name": "adamw", "lr": 1e-3, "layer_decay": layer_decay}}
    module = ImageClassifier({"name": "vit_cpe", "num_classes": 10, "depth": 2, "img_size": 32, "patch_size": 8}, recipe)
    today = [n for n, _ in module.net.named_parameters()]
    peg = [n for n in today if n.startswith("position.peg.")]
    assert peg and today.index(peg[0]) < today.index("blocks.0.norm1.weight")
    then = [n for n in today if n not in peg]
    then[then.index("norm.weight"):then.index("norm.weight")] = peg  # the PEG after the blocks, as it was
    params = dict(module.net.named_parameters())
    old_optimizer = build_optimizer(in_order(module.net, then), module.recipe.optimizer)
    for k, name in enumerate(sorted(today)):  # one step with a gradient that names the parameter
        params[name].grad = torch.full_like(params[name], float(k + 1))
    old_optimizer.step()
    checkpoint = {"state_dict": {f"net.{n}": params[n].detach().clone() for n in then},
                  "optimizer_states": [old_optimizer.state_dict()]}
    plain = build_optimizer(module.net, module.recipe.optimizer)
    try:  # as torch would restore it: by position
        plain.load_state_dict(checkpoint["optimizer_states"][0])
        by_position = {n: plain.state[params[n]]["exp_avg"].flatten()[0].item() for n in today}
    except ValueError:
        by_position = {}
    module.on_load_checkpoint(checkpoint)
    restored = build_optimizer(module.net, module.recipe.optimizer)
    restored.load_state_dict(checkpoint["optimizer_states"][0])
    for k, name in enumerate(sorted(today)):
        assert restored.state[params[name]]["exp_avg"].flatten()[0].item() == pytest.approx(0.1 * (k + 1)), name
    expected = {n: 0.1 * (k + 1) for k, n in enumerate(sorted(today))}
    wrong = [n for n in today if n not in by_position or abs(by_position[n] - expected[n]) > 1e-6]
    assert wrong, "by position, every parameter got its own state: the test shows nothing"
