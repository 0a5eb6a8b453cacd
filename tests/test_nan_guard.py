"""The NaN/inf guard: stop with one line and keep the last good checkpoint, or skip the bad step."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitlab.callbacks import AtomicModelCheckpoint, NaNGuard, NonFiniteLossError
from vitlab.checkpoint import DigestCheckpointIO, load_checkpoint
from vitlab.errors import ConfigError, VitlabError
from vitlab.families import ImageClassifier
from vitlab.training import train


class Regression(L.LightningModule):
    """A linear model whose loss turns NaN (or inf) on the steps listed in ``bad_steps``."""

    def __init__(self, bad_steps=(), bad_value=math.nan):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_steps, self.bad_value = set(bad_steps), bad_value
        self.weights_seen: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.weights_seen[self.global_step] = self.layer.weight.detach().clone()
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        return loss * self.bad_value if self.global_step in self.bad_steps else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module, tmp_path, guard, max_steps=6):
    data = TensorDataset(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.randn(8, 1))
    checkpoint = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[guard, checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", plugins=[DigestCheckpointIO()])
    trainer.fit(module, DataLoader(data, batch_size=2))
    return trainer


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_stop_mode_stops_and_keeps_the_last_good_checkpoint(tmp_path, one_thread, bad_value):
    module = Regression(bad_steps={3}, bad_value=bad_value)
    with pytest.raises(NonFiniteLossError) as raised:
        _fit(module, tmp_path, NaNGuard(mode="stop"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("callbacks.nan_guard: train loss is")
    assert "step 3" in message and str(tmp_path / "last.ckpt") in message
    kept = load_checkpoint(tmp_path / "last.ckpt")
    assert kept["global_step"] == 3  # written after step 3's predecessor, nothing after the bad step
    torch.testing.assert_close(kept["state_dict"]["layer.weight"], module.weights_seen[3])
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())


def test_skip_mode_drops_the_bad_step_and_goes_on(tmp_path, one_thread):
    module = Regression(bad_steps={2})
    guard = NaNGuard(mode="skip")
    trainer = _fit(module, tmp_path, guard)
    assert guard.skipped_steps == 1 and trainer.global_step == 6
    torch.testing.assert_close(module.weights_seen[3], module.weights_seen[2])  # step 2 changed nothing
    assert not torch.equal(module.weights_seen[2], module.weights_seen[1])
    assert torch.isfinite(module.layer.weight).all()
    assert load_checkpoint(tmp_path / "last.ckpt")["callbacks"]


def test_skip_mode_gives_up_after_too_many_bad_steps_in_a_row(tmp_path, one_thread):
    with pytest.raises(NonFiniteLossError, match="for 3 steps in a row"):
        _fit(Regression(bad_steps={1, 2, 3, 4}), tmp_path, NaNGuard(mode="skip", max_skips=2))


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="callbacks.nan_guard.mode: unknown mode 'warn'"):
        NaNGuard(mode="warn")


def test_default_callbacks_stop_a_diverging_run(smoke_cfg, tmp_path, monkeypatch):
    """The guard is on by default: a NaN in epoch 2 ends train() with a VitlabError (one line at the
    command line) and last.ckpt from epoch 1 stays."""
    original = ImageClassifier.training_step

    def diverges_at_step_4(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * math.nan if self.global_step == 4 else loss

    monkeypatch.setattr(ImageClassifier, "training_step", diverges_at_step_4)
    cfg = smoke_cfg("recipe.epochs=2", "trainer.limit_val_batches=1", "model.net.depth=1")
    with pytest.raises(VitlabError, match=r"train loss is nan at epoch 2, step 4; stopped and the last good checkpoint is .*last.ckpt"):
        train(cfg)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert not (tmp_path / "run" / "metrics.json").exists()
