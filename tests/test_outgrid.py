import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from vitlab.errors import ConfigError
from vitlab.layers.dynamic_kernel import DynamicKernelMixer
from vitlab.layers.grid_attention import grid_partition, grid_unpartition
from vitlab.measure import image_flops
from vitlab.models import create_model
from vitlab.training import train


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, classes, expected",
    [
        ("outgrid_7m", 100, 7_518_102),
        ("outgrid_14m", 100, 14_599_198),
        ("outgrid_14m", 10, 14_564_548),  # the SVHN model
        ("outgrid_tin22m", 200, 22_542_628),
        ("outgrid_tinc", 200, 6_264_452),
        ("outgrid_b", 100, 12_266_266),
        ("outgrid_33m", 100, 32_974_583),
    ],
)
def test_parameter_counts_match_the_seed(name, classes, expected):
    assert _params(create_model(name, num_classes=classes)) == expected


def test_macs_of_the_7m_model_match_the_analytic_count():
    flops = image_flops(create_model("outgrid_7m"), 32)  # the dynamic kernel's taps counted by formula
    assert abs(flops.macs - 443e6) / 443e6 < 0.005, flops.macs


def test_grid_partition_round_trip_and_layout():
    x = torch.randn(2, 8, 12, 5)
    for g in (1, 2, 4):
        groups = grid_partition(x, g)
        assert groups.shape == (2 * g * g, (8 // g) * (12 // g), 5)
        assert torch.equal(grid_unpartition(groups, g, 8, 12), x)
    # group b*g^2 + gy*g + gx holds the pixels (i*g + gy, j*g + gx) in row-major (i, j) order
    g, groups = 4, grid_partition(x, 4)
    b, gy, gx, i, j = 1, 2, 3, 1, 2
    torch.testing.assert_close(groups[b * g * g + gy * g + gx, i * (12 // g) + j], x[b, i * g + gy, j * g + gx])


def _naive_mixer(mixer, x):
    """The spec's aggregation written as loops over heads, taps and pixels."""
    B, C, H, W = x.shape
    h, k = mixer.num_heads, mixer.kernel_size
    weights = mixer.kernel_logits(x).view(B, h, k * k, H, W).softmax(2)
    v = F.pad(mixer.value(x), (k // 2,) * 4)
    out = torch.zeros(B, C, H, W)
    for c in range(C):
        head = c // (C // h)
        for tap in range(k * k):
            dy, dx = divmod(tap, k)
            out[:, c] += weights[:, head, tap] * v[:, c, dy : dy + H, dx : dx + W]
    return mixer.proj(out)


def test_dynamic_kernel_mixer_matches_a_naive_reference():
    torch.manual_seed(0)
    mixer = DynamicKernelMixer(dim=6, num_heads=3, kernel_size=3).eval()
    x = torch.randn(2, 6, 5, 4)
    out, weights = mixer(x, need_weights=True)
    torch.testing.assert_close(out, _naive_mixer(mixer, x), atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 3, 9, 5, 4)
    torch.testing.assert_close(weights.sum(2), torch.ones(2, 3, 5, 4))


def test_attention_maps_shapes_and_normalisation():
    model = create_model("outgrid_7m").eval()
    x = torch.randn(2, 3, 32, 32)
    typed = model.attention_maps(x)
    assert {m.layout for m in typed.values()} == {"kernel", "grid"}
    maps = {n: m.weights for n, m in typed.items()}
    assert len(maps) == 2 * 7  # a kernel and a grid map for each of the 7 blocks
    assert maps["stages.0.blocks.0.kernel"].shape == (2, 2, 9, 32, 32)
    assert maps["stages.0.blocks.0.grid"].shape == (2, 64, 2, 16, 16)  # g=8: 64 groups of 4x4 tokens
    assert maps["stages.2.blocks.2.kernel"].shape == (2, 6, 9, 8, 8)
    assert maps["stages.3.blocks.0.grid"].shape == (2, 4, 8, 4, 4)
    for name, m in maps.items():
        axis = 2 if name.endswith("kernel") else -1
        assert (m.sum(axis) - 1).abs().max() < 1e-4, name
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


def test_model_b_has_front_kernels_and_no_kernels_in_its_blocks():
    model = create_model("outgrid_b").eval()
    maps = {n: m.weights for n, m in model.attention_maps(torch.randn(1, 3, 32, 32)).items()}
    assert [k for k in maps if k.startswith("front")] == ["front.0.kernel", "front.1.kernel", "front.2.kernel"]
    assert not any(k.startswith("stages") and k.endswith("kernel") for k in maps)
    assert maps["front.0.kernel"].shape == (1, 2, 9, 32, 32)


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = create_model("outgrid_7m", drop_path_rate=0.09)
    blocks = [b for stage in model.stages for b in stage.blocks]
    rates = [b.grid.drop_path.drop_prob if hasattr(b.grid.drop_path, "drop_prob") else 0.0 for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.09)
    assert rates == pytest.approx([0.09 * i / 6 for i in range(7)])
    first = blocks[1]  # the same rate on the kernel, kernel-MLP, grid and MLP residuals
    assert first.kernel.drop_path1.drop_prob == first.kernel.drop_path2.drop_prob == first.mlp.drop_path.drop_prob


def test_gradients_reach_every_parameter_at_64px():
    model = create_model("outgrid_tinc", num_classes=5)
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"img_size": 20}, r"model.net: grid_sizes\[0\]=8 does not divide stage 0's 20x20 feature map"),
        ({"grid_sizes": (8, 8, 3, 2)}, r"grid_sizes\[2\]=3 does not divide stage 2's 8x8 feature map"),
        ({"kernel_size": 4}, "kernel_size=4 must be odd"),
        ({"num_heads": (2, 3, 5, 8)}, r"num_heads\[2\]=5 does not divide dims\[2\]=192"),
        ({"depths": (1, 2, 3)}, "depths has 3 entries but dims has 4"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("outgrid_7m", **kwargs)


def test_cli_config_outgrid_cifar100_composes(tmp_path):
    cfg = compose_config(["model=outgrid", "data=cifar100"], tmp_path)
    assert cfg.model.net.name == "outgrid" and cfg.recipe.optimizer.lr == 5e-4  # the registry's alias of outgrid_7m
    assert cfg.model._target_ == "vitlab.families.ImageClassifier"  # no family subclass: the contract suffices


@pytest.mark.parametrize("img_size, model", [(32, "outgrid"), (64, "outgrid_tinc")])
def test_trains_on_synthetic_data(img_size, model, smoke_cfg, tmp_path):
    metrics = train(
        smoke_cfg(f"model={model}", f"data.img_size={img_size}", "recipe.batch_size=8", "data.train_size=24",
                  "data.val_size=8", "data.test_size=8", "trainer.limit_train_batches=2",
                  "~callbacks.model_checkpoint", "trainer.enable_checkpointing=false")
    )
    assert metrics["global_step"] == 2 and metrics["params"] > 6e6
    assert 0.0 <= metrics["test/top1"] <= 1.0


def _small_outgrid(**kwargs):
    return create_model("outgrid_7m", dims=(8, 16, 16, 16), num_heads=(2, 2, 2, 2), outlook_heads=(2, 2, 2, 2),
                        depths=(1, 1, 1, 1), stem_dim=8, **kwargs)


def _randomise_batchnorms(net):
    generator = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator))
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=generator))
            m.bias.data.copy_(torch.randn(c, generator=generator))


def _working_modules(net):
    return [m for m in net.modules() if not isinstance(m, torch.nn.Identity)]


def test_fused_inference_copy_gives_the_eager_logits_with_every_batchnorm_folded(one_thread):
    from vitlab.inference import prepare_for_inference

    torch.manual_seed(0)
    net = _small_outgrid(num_classes=7)
    _randomise_batchnorms(net)
    net.eval()
    fused = prepare_for_inference(net, "fused")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)
    assert not [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # the last one into the head
    assert len(_working_modules(fused)) < len(_working_modules(net))
    assert all(m.inplace for m in fused.modules() if isinstance(m, torch.nn.SiLU))
    assert isinstance(net.norm, torch.nn.BatchNorm2d)  # the network itself is left as it was
    assert not net.stages[0].blocks[0].mbconv.expand[2].inplace  # in training autograd would clone its input


def test_fuse_for_inference_refuses_training_mode_and_keeps_the_norm_without_a_head():
    net = _small_outgrid(num_classes=0)
    with pytest.raises(RuntimeError, match="eval mode"):
        net.fuse_for_inference()
    net.eval().fuse_for_inference()
    assert isinstance(net.norm, torch.nn.BatchNorm2d)  # its pooled features are the output
