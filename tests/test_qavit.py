"""QAViT: parameter counts against the seed, the four branches, the token bank (functional vs the
seed's in-place one), precision, recipes and a resumed training run."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from vitlab.config import to_recipe
from vitlab.errors import ConfigError
from vitlab.layers.branch_attention import branch_attend, flash_available
from vitlab.layers.dilated_attention import _strided_indices, multiscale_pool_matrix
from vitlab.layers.window_attention import WindowBankAttention, window_partition, window_reverse, window_valid_mask
from vitlab.models import create_model
from vitlab.models.qavit import BRANCHES
from vitlab.optim import WarmupCosine
from vitlab.training import train

TINY = dict(
    num_classes=10, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_groups=4, bank_size=4,
    window_size=3,  # 8x8 grid: windows do not divide it, so padding and masking are exercised
    drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
)


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("qavit_tiny_32", **{**TINY, **overrides})


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "name, faithful, total, frozen",
    [
        ("qavit_tiny", True, 13_054_564, 88_848),  # the seed's code (docs/seeds/qavit.md; dead params)
        ("qavit_small", True, 38_125_636, 197_792),
        ("qavit_tiny", False, 12_897_396, 0),
        ("qavit_small", False, 37_916_260, 0),
    ],
)
def test_parameter_counts_at_100_classes(name, faithful, total, frozen):
    net = create_model(name, num_classes=100, faithful=faithful)  # on CPU: faster to build than on meta
    assert sum(p.numel() for p in net.parameters()) == total
    assert sum(p.numel() for p in net.parameters() if not p.requires_grad) == frozen


def test_named_sizes_follow_the_spec():
    t, s, n = create_model("qavit_tiny"), create_model("qavit_small"), create_model("qavit_tiny_32")
    assert (t.embed_dim, len(t.blocks), t.blocks[0].bank.num_heads, t.token_bank.num_tokens, t.grid) == (256, 12, 4, 16, (14, 14))
    assert (s.embed_dim, len(s.blocks), s.blocks[0].bank.num_heads, s.token_bank.num_tokens) == (384, 16, 6, 32)
    assert (n.img_size, n.patch_size, n.grid, n.blocks[0].window.window_size) == (32, 4, (8, 8), 4)
    assert t.blocks[0].fusion.projs[0].out_features == 64 and t.blocks[0].bottleneck.fc1.out_features == 128


def test_bad_sizes_and_inputs_are_named():
    with pytest.raises(ConfigError, match=r"^model.net: embed_dim 40 must split into num_groups 8"):
        create_model("qavit_tiny_32", embed_dim=40, num_heads=2)
    with pytest.raises(ConfigError, match=r"^model.net.heads: qavit_tiny_32 \(QAViTConfig\) has no such setting; did you mean num_heads"):
        create_model("qavit_tiny_32", heads=2)
    with pytest.raises(ValueError, match="does not give the 8x8 grid"):
        tiny()(torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------- branches
@pytest.mark.parametrize("grid, window", [((5, 6), 4), ((7, 7), 7), ((14, 14), 7), ((3, 8), 3), ((8, 8), 3)])
def test_window_partition_round_trips(grid, window):
    x = torch.randn(2, grid[0] * grid[1], 5)
    windows = window_partition(x, grid, window)
    count = math.ceil(grid[0] / window) * math.ceil(grid[1] / window)
    assert windows.shape == (2 * count, window * window, 5)
    torch.testing.assert_close(window_reverse(windows, grid, window), x, rtol=0, atol=0)
    assert window_valid_mask(grid, window).sum() == grid[0] * grid[1]


def test_window_attention_hides_padding(one_thread):
    torch.manual_seed(0)
    attn = WindowBankAttention(16, 2, grid=(5, 5), window_size=4).eval()
    x, bank = torch.randn(2, 25, 16), torch.randn(2, 3, 16)
    out, probs = attn(x, bank, bank, need_weights=True)
    assert out.shape == (2, 25, 16) and probs.shape == (2, 4, 2, 16, 16 + 3)
    valid = window_valid_mask((5, 5), 4)  # (windows, 16)
    on_padded_keys = probs[..., :16] * (~valid)[None, :, None, None, :]
    assert on_padded_keys.abs().max() == 0 and (~valid).sum() == 4 * 16 - 25
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    # The padded zeros change nothing: the real tokens' output equals the fused SDPA path's.
    fused, _ = attn(x, bank, bank)
    torch.testing.assert_close(fused, out, rtol=1e-5, atol=1e-6)


def test_multiscale_pooling_layouts():
    grid = (14, 14)
    pooled = multiscale_pool_matrix(grid, (1, 2, 3))
    assert pooled.shape == (49 + 16 + 9, 196)  # each scale 2x2-pooled on its own grid, border cells kept
    torch.testing.assert_close(pooled.sum(1), torch.ones(74))
    # No pooled token mixes scales: the stride-3 rows only touch stride-3 positions.
    stride3 = set(_strided_indices(grid, 3).flatten().tolist())
    assert all(set(row.nonzero().flatten().tolist()) <= stride3 for row in pooled[65:])
    seed = multiscale_pool_matrix(grid, (1, 2, 3), pooling="faithful", max_len=128)
    assert seed.shape == (128, 196)
    assert (seed > 0).sum() == 256 == 270 - 14  # 14 of the 25 stride-3 tokens never seen
    # The seed pairs the stride-2 grid's row ends (positions 12 and 28) and the stride-2 / stride-3
    # boundary (positions 180 and 0) along its 1-D sequence.
    assert seed[101, 12] == seed[101, 28] == 0.5 and seed[122, 180] == seed[122, 0] == 0.5


def test_every_branch_map_is_a_softmax_and_matches_the_fused_path(one_thread):
    for faithful in (False, True):
        net = tiny(faithful=faithful, linformer_k=64 if faithful else None).eval()  # the seed's Linformers
        x = torch.randn(2, 3, 32, 32)
        maps = {n: m.weights for n, m in net.attention_maps(x).items()}
        assert set(maps) == {f"blocks.{i}.{b}" for i in range(2) for b in BRANCHES}
        for name, m in maps.items():
            torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), msg=name)
        S, N = 4, 64
        assert maps["blocks.0.window"].shape == (2, 9, 2, 9, (64 if faithful else 9) + S)
        assert maps["blocks.0.dilated"].shape == (2, 2, N, (64 if faithful else 16 + 4 + 4) + S)
        assert maps["blocks.0.channel_group"].shape == (2, 4, 2, N, N + S)
        assert maps["blocks.0.bank"].shape == (2, 2, N, S)
        logits_explicit = net.forward_head(net._forward_tokens(x, need_weights=True)[0])
        torch.testing.assert_close(net(x), logits_explicit, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- token bank
def test_batch_independence_in_train_mode(one_thread):
    """One image's logits must not depend on the other images of its batch, also in training. The
    seed's bank averages its writes over the batch: the same check fails in faithful mode."""
    x, others_a, others_b = torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32), 3 * torch.randn(3, 3, 32, 32) + 1

    def check_batch_independent(net):  # fresh copies: the faithful bank changes with every forward
        first_a = copy.deepcopy(net)(torch.cat((x, others_a)))[0]
        first_b = copy.deepcopy(net)(torch.cat((x, others_b)))[0]
        torch.testing.assert_close(first_a, first_b, rtol=1e-5, atol=1e-6)

    net = tiny().train()
    before = copy.deepcopy(net.state_dict())
    check_batch_independent(net)
    net(torch.cat((x, others_a)))
    for key, value in net.state_dict().items():  # nothing is mutated by a forward
        assert torch.equal(value, before[key]), key

    seed = tiny(faithful=True).train()
    with pytest.raises(AssertionError, match="not close"):
        check_batch_independent(seed)  # the faithful bank leaks across the batch
    bank_before = seed.token_bank.keys.detach().clone()
    seed(torch.cat((x, others_a)))
    assert not torch.equal(seed.token_bank.keys, bank_before)  # ... and rewrites its parameters


def test_functional_bank_is_differentiable_and_faithful_gateway_frozen(one_thread):
    net = tiny().train()
    F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    bank = net.token_bank
    for param in (bank.gateway_compress.weight, bank.gateway_gate.weight, bank.write_gate, bank.keys,
                  net.blocks[0].write_norms[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    seed = tiny(faithful=True)
    assert not any(p.requires_grad for p in seed.token_bank.gateway_compress.parameters())
    assert not any(p.requires_grad for p in seed.blocks[0].write_norms.parameters())


def _synthetic_batches(steps: int, batch: int = 8, classes: int = 10):
    """Learnable synthetic data: a fixed random pattern per class plus noise."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(classes, 3, 32, 32, generator=g)
    for _ in range(steps):
        y = torch.randint(0, classes, (batch,), generator=g)
        yield patterns[y] + 0.5 * torch.randn(batch, 3, 32, 32, generator=g), y


def test_bank_norm_stays_bounded_over_200_training_steps(one_thread):
    net = tiny(depth=1).train()  # one block still writes three times per forward
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)  # the README's LR
    norms, bounds = [], []
    for x, y in _synthetic_batches(200):
        logits, aux = net.forward_with_aux(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        norms.append(aux["bank_norm"].item())
        bounds.append(net.token_bank.state_norm_bound())
        assert math.isfinite(loss.item())
    assert all(n <= b + 1e-4 for n, b in zip(norms, bounds))
    assert max(norms) < 2 * max(norms[:10])  # no drift with training steps
    assert max(bounds) < 2 * bounds[0]

    seed = tiny(depth=1, faithful=True).train()  # the seed's bank only grows: docs/seeds/qavit.md (1.27 -> 198 in 20 forwards)
    with torch.no_grad():
        seed_norms = [seed.forward_with_aux(x)[1]["bank_norm"].item() for x, _ in _synthetic_batches(20)]
    assert seed_norms[-1] > 10 * seed_norms[0]


@pytest.mark.parametrize("lr", [5e-4, 1e-3])  # the seed's train.py and README learning rates
def test_no_nan_under_bf16_autocast_at_the_seed_lr(lr, one_thread):
    net = tiny().train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    for x, y in _synthetic_batches(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, aux = net.forward_with_aux(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()
    assert torch.isfinite(aux["bank_norm"])


def test_flops_are_countable_under_no_grad(one_thread):
    """torch's flop counter (under vitlab.measure, which the FLOPs callback and the bench use) hooks
    every module's inputs, bank state included."""
    from torch.utils.flop_counter import FlopCounterMode

    net = tiny().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() > 2 * sum(p.numel() for p in net.blocks.parameters()) / 2


def test_fusion_weights_start_equal():
    weights = tiny().fusion_weights()
    torch.testing.assert_close(weights, torch.full((2, 4), 0.25))


@pytest.mark.skipif(not flash_available(), reason="flash-attn is not installed or no CUDA device")
def test_flash_attn_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 49, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flash, _ = branch_attend(q, k, v, use_flash=True)
    sdpa, _ = branch_attend(q, k, v, use_flash=False)
    torch.testing.assert_close(flash, sdpa, rtol=2e-2, atol=2e-2)
    net = tiny(use_flash=True).cuda().eval()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = net(x)
    net.blocks.apply(lambda m: setattr(m, "use_flash", False) if hasattr(m, "use_flash") else None)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = net(x)
    torch.testing.assert_close(fast.float(), plain.float(), rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------- configs and training
def test_recipes_and_experiments(tmp_path):
    code = to_recipe(compose_config(["model=qavit_tiny"], tmp_path).recipe)
    readme = to_recipe(compose_config(["model=qavit_tiny", "recipe=qavit_readme"], tmp_path).recipe)
    assert (code.optimizer.lr, code.schedule.warmup_epochs, code.epochs, code.batch_size) == (5e-4, 10, 300, 256)
    assert (readme.optimizer.lr, readme.schedule.warmup_epochs) == (1e-3, 20)
    assert code.label_smoothing == 0.1 and code.grad_clip == 1.0 and code.schedule.min_lr == 1e-6
    # The first step trains at a small positive LR, not 0.
    assert 0 < WarmupCosine(10, 100, code.schedule.warmup_lr / code.optimizer.lr)(0) < 0.01

    tiny_224 = compose_config(["experiment=cifar100_qavit_tiny"], tmp_path)
    assert (tiny_224.model.net.name, tiny_224.model.net.img_size, tiny_224.data.resize_interpolation) == ("qavit_tiny", 224, "bilinear")
    assert tiny_224.recipe.augment.crop_padding == 28
    small = compose_config(["experiment=cifar100_qavit_small"], tmp_path)
    assert (small.model.net.name, small.data.img_size, small.data.num_classes) == ("qavit_small", 224, 100)
    native = compose_config(["experiment=cifar100_qavit_tiny_32"], tmp_path)
    assert (native.model.net.name, native.data.img_size, native.recipe.augment.crop_padding) == ("qavit_tiny_32", 32, 4)

    from vitlab.datamodules import CIFAR100DataModule

    dm = CIFAR100DataModule(str(tmp_path), num_classes=100, img_size=224, resize_interpolation="bilinear")
    assert dm.resize_interpolation == "bilinear"
    assert CIFAR100DataModule(str(tmp_path), num_classes=100).resize_interpolation == "bicubic"
    with pytest.raises(ConfigError, match="^data.resize_interpolation: unknown mode 'lanczos'"):
        CIFAR100DataModule(str(tmp_path), num_classes=100, resize_interpolation="lanczos")


def test_train_resumes_the_schedule_and_logs_fusion_weights(smoke_cfg, tmp_path):
    common = (
        "model=qavit_tiny_32", "model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2",
        "model.net.num_groups=4", "model.net.bank_size=4", "recipe.epochs=3", "recipe.schedule.warmup_epochs=1",
        "recipe.augment.crop_padding=4", "trainer.limit_val_batches=1", "test=false", "logger=csv",
    )
    first = train(smoke_cfg(*common, "trainer.max_epochs=1", out="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(smoke_cfg(*common, "trainer.max_epochs=2", f"ckpt_path={last}", out="resumed"))
    assert (first["global_step"], resumed["global_step"], resumed["epochs"]) == (3, 6, 2)  # 3 batches per epoch

    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6  # the scheduler continued, not restarted
    schedule = WarmupCosine(3, 9, 1e-6 / 5e-4, 1e-6 / 5e-4)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(5e-4 * schedule(6), rel=1e-9)
    assert schedule(6) < schedule(3)  # a restarted warmup would sit elsewhere

    (metrics_csv,) = (tmp_path / "first" / "csv").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {f"fusion/{b}" for b in BRANCHES} <= logged and "fusion/blocks.0.window" in logged
    assert "train/bank_norm" in logged and "val/attn_sum_err" in logged
    weights = [float(row["fusion/window"]) for row in rows if row.get("fusion/window")]
    assert weights and all(0 < w < 1 for w in weights)
