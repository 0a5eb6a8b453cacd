import math

import pytest
import torch

from vitlab.config import OptimizerConfig, ScheduleConfig
from vitlab.models import create_model
from vitlab.optim import WarmupCosine, build_optimizer, build_scheduler


def test_warmup_starts_small_and_reaches_peak_then_cosine_to_min():
    f = WarmupCosine(warmup_steps=10, total_steps=110, warmup_factor=0.001, min_factor=0.01)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(110) == pytest.approx(0.01)
    assert f(500) == pytest.approx(0.01)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_first_step_peak_reproduces_the_seed_off_by_one():
    # Mini-ViT seed: step 1 at the peak, step k >= 2 at lr(k-1) = eta*(k-1)/W during warmup.
    f = WarmupCosine(warmup_steps=2920, total_steps=73000, first_step_peak=True)
    assert f(0) == 1.0
    assert f(1) == pytest.approx(1 / 2920)
    assert f(2919) == pytest.approx(2919 / 2920)
    # spec reference: end of epoch 50 -> 0.001866 of peak 0.002
    assert 0.002 * f(50 * 292) == pytest.approx(0.001866, abs=2e-6)


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_scheduler_with_warmup_epochs_and_ratio():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = build_scheduler(opt, ScheduleConfig(warmup_epochs=2, warmup_lr=0.0), lr=0.1, steps_per_epoch=5, epochs=4)
    lrs = _lrs(sched, opt, 20)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.05) and lrs[10] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = build_scheduler(opt, ScheduleConfig(warmup_ratio=0.25, warmup_lr=1e-3, min_lr=1e-3), 0.1, 10, 4)
    lrs = _lrs(sched, opt, 40)
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(0.1)
    assert lrs[0] < 0.1 / 50  # never the full LR on the first step
    assert min(lrs[10:]) >= 1e-3 - 1e-12


def test_scheduler_state_is_plain_numbers():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    state = build_scheduler(opt, ScheduleConfig(warmup_epochs=1), 0.1, 3, 2).state_dict()
    torch.save(state, buf := __import__("io").BytesIO())
    buf.seek(0)
    torch.load(buf, weights_only=True)


def test_adamw_groups_exclude_norms_biases_and_cls_tokens():
    net = create_model("mini_vit")
    opt = build_optimizer(net, OptimizerConfig(lr=2e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "cls_token" in plain and "norm.weight" in plain and "head.bias" in plain
    assert "blocks.0.norm1.weight" in plain and "blocks.0.attn.proj.bias" in plain
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed and "patch_embed.weight" in decayed
    assert decayed | plain == set(names.values())


def test_exclude_from_decay_off_decays_everything():
    net = create_model("mini_vit")
    opt = build_optimizer(net, OptimizerConfig(weight_decay=0.05, exclude_from_decay=False))
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)
