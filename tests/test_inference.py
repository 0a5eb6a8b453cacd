"""The inference switch (vitlab.inference, hardware.inference): fused and compiled copies give the
eager logits, leave the trained network alone, and evaluate / predict / bench use them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitlab.api import Run
from vitlab.config import to_hardware
from vitlab.errors import ConfigError
from vitlab.evaluate import Scorer
from vitlab.families import ImageClassifier
from vitlab.inference import INFERENCE_MODES, fold_batchnorm, inference_network, prepare_for_inference

TINY_OUTGRID = dict(name="outgrid_7m", dims=[8, 16, 16, 16], num_heads=[2, 2, 2, 2], outlook_heads=[2, 2, 2, 2],
                    depths=[1, 1, 1, 1], stem_dim=8, num_classes=5)


def _randomise_batchnorm(net: nn.Module) -> None:
    """Statistics and affine far from the identity, so a wrong fold shows in the logits."""
    generator = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator))


def _tiny_outgrid_module(channels_last: bool = False) -> ImageClassifier:
    torch.manual_seed(0)
    module = ImageClassifier(net=dict(TINY_OUTGRID), recipe={"channels_last": channels_last})
    _randomise_batchnorm(module.net)
    return module.eval()


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@torch.no_grad()
def test_fold_batchnorm_keeps_the_output_and_removes_each_folded_norm(one_thread):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.SiLU(),
                          nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    _randomise_batchnorm(block)
    block.eval()
    x = torch.randn(2, 3, 7, 7)
    expected = block(x)
    assert fold_batchnorm(block) == 2  # conv+BN twice; the BN after a BN is not after a conv
    assert [type(m).__name__ for m in block] == ["Conv2d", "Identity", "SiLU", "Conv2d", "Identity", "BatchNorm2d"]
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, backend", [
    ("fused", None),
    pytest.param("compiled", "eager", marks=pytest.mark.slow),  # dynamo's capture alone: ~10 s on 2 cores
    pytest.param("compiled", "inductor", marks=pytest.mark.slow),  # minutes of C++ compilation on 2 cores
])
def test_fused_and_compiled_copies_give_the_eager_logits_and_leave_the_network_alone(mode, backend, one_thread):
    net = _tiny_outgrid_module().net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = net(x)
    fast = prepare_for_inference(net, mode, **({"compile_backend": backend} if backend else {}))
    with torch.inference_mode():
        got = fast(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # The trained network is untouched: same modules, same weights, gradients still on.
    assert _batchnorms(net) > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())
    copy = getattr(fast, "_orig_mod", fast)
    assert _batchnorms(copy) < _batchnorms(net)
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training


def test_compiled_mode_compiles_the_fused_copy_with_the_backend_asked_for(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, backend: calls.append((module, backend)) or module)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    fast = prepare_for_inference(net, "compiled", compile_backend="aot_eager")
    assert calls == [(fast, "aot_eager")]
    assert fast is not net and isinstance(fast[1], nn.Identity) and isinstance(net[1], nn.BatchNorm2d)


def test_eager_is_the_network_itself_and_a_network_can_fold_more_itself():
    class FoldsItsScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.scale = nn.Linear(4, 2), nn.Parameter(torch.tensor(3.0))

        def forward(self, x):
            return self.linear(x) * self.scale

        def fuse_for_inference(self):
            self.linear.weight.data *= self.scale.data
            self.linear.bias.data *= self.scale.data
            self.scale.data.fill_(1.0)

    net = FoldsItsScale()
    assert prepare_for_inference(net, "eager") is net and not net.training
    fast = prepare_for_inference(net, "fused")
    x = torch.randn(5, 4)
    torch.testing.assert_close(fast(x), net(x))
    assert fast.scale.item() == 1.0 and net.scale.item() == 3.0


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="inference mode 'fast': use one of eager, fused, compiled"):
        prepare_for_inference(nn.Linear(2, 2), "fast")
    with pytest.raises(ConfigError, match="hardware.inference"):
        to_hardware({"inference": "fast"})
    assert to_hardware({"inference": "fused"}).inference == "fused"
    assert INFERENCE_MODES == ("eager", "fused", "compiled")


def test_evaluate_scores_the_same_with_every_mode_and_feeds_the_recipe_layout(one_thread):
    module = _tiny_outgrid_module(channels_last=True)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 32, 32, generator=generator), torch.randint(0, 5, (12,), generator=generator))
    results = {}
    for mode in ("eager", "fused"):
        scorer = Scorer(module, torch.device("cpu"), "32-true", 0.0, warmup_iters=0, inference=mode)
        results[mode] = scorer.score(DataLoader(data, batch_size=4))
    assert results["eager"]["images"] == results["fused"]["images"] == 12
    assert results["eager"]["top1"] == results["fused"]["top1"]
    assert results["eager"]["loss"] == pytest.approx(results["fused"]["loss"], abs=1e-5)
    seen = []
    network = inference_network(module, "fused")
    network.net.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    network(torch.randn(2, 3, 32, 32))
    assert seen == [True]
    assert module.net.training is False and _batchnorms(module.net) > 0


def test_predict_with_the_fused_mode_gives_the_eager_probabilities(one_thread):
    module = _tiny_outgrid_module()
    run = Run(module=module, transform=None, config=None, classes=[str(i) for i in range(5)], ckpt_path=None)
    images = torch.randn(4, 3, 32, 32)
    eager_p, eager_i = run.predict(images, k=3)
    fused_p, fused_i = run.predict(images, k=3, inference="fused")
    torch.testing.assert_close(fused_p, eager_p, atol=1e-5, rtol=1e-4)
    assert torch.equal(fused_i, eager_i)
    assert run._network[0] == "fused"
