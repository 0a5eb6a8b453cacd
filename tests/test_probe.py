"""Linear probes on frozen block features (vitlab.probe); ``vitlab-evaluate ... probe=linear`` on a run is
tested in tests/test_evaluate.py, beside its trained run."""

from __future__ import annotations

import pytest
import torch

from test_evaluate import compose_evaluate
from vitlab.errors import ConfigError
from vitlab.evaluate import evaluate
from vitlab.probe import block_names, fit_linear_probe, pooled_block_features

pytestmark = pytest.mark.usefixtures("one_thread")


def _top1(probe, x, y) -> float:
    with torch.no_grad():
        return (probe(x).argmax(1) == y).float().mean().item()


def test_a_probe_separates_what_is_linearly_separable_and_not_what_is_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(400) % 4
    x = centres[y] + torch.randn(400, 16, generator=g) * 100 + 1000  # far from 0 and wide: standardising matters
    x[:, :4] = centres[y][:, :4] * 50 + torch.randn(400, 4, generator=g)  # four informative features
    probe = fit_linear_probe(x[:300], y[:300], num_classes=4)
    assert _top1(probe, x[300:], y[300:]) > 0.95
    noise_labels = torch.randint(0, 4, (400,), generator=g)
    noise = torch.randn(400, 16, generator=g)
    guess = fit_linear_probe(noise[:300], noise_labels[:300], num_classes=4)
    assert _top1(guess, noise[300:], noise_labels[300:]) < 0.45  # chance is 0.25


def test_features_are_each_blocks_map_averaged_over_its_positions():
    from vitlab.models import create_model

    net = create_model("vit_rope_mixed", num_classes=10, img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3)
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    features, got = pooled_block_features(net, [(images[:4], labels[:4]), (images[4:], labels[4:])], torch.device("cpu"))
    maps = net.eval().forward_intermediates(images, intermediates_only=True)
    assert len(features) == len(maps) == 3 and torch.equal(got, labels)
    for pooled, feature_map in zip(features, maps):
        torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))
    assert len(block_names(net, 3)) == 3 and block_names(torch.nn.Linear(1, 1), 2) == ["block0", "block1"]


def test_an_unknown_probe_is_one_line(tmp_path):
    cfg = compose_evaluate(f"ckpt_path={tmp_path / 'last.ckpt'}", "probe=knn", out_dir=tmp_path / "e")
    with pytest.raises(ConfigError, match=r"^probe: unknown probe 'knn'; use linear"):
        evaluate(cfg)
    assert not (tmp_path / "e").exists()
