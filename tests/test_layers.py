import math

import pytest
import torch

from vitlab.layers import Attention, TransformerBlock, attend, sincos_1d, sincos_2d


def test_attend_explicit_path_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    fused, none = attend(q, k, v)
    explicit, probs = attend(q, k, v, need_weights=True)
    assert none is None
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert probs.shape == (2, 3, 7, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 7), atol=1e-4, rtol=0)


def test_attend_probabilities_are_the_softmax_of_scaled_scores():
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    out, probs = attend(q, k, v, need_weights=True)
    a = math.exp(1 / math.sqrt(2))
    expected = torch.tensor([a / (a + 1), 1 / (a + 1)])
    torch.testing.assert_close(probs[0, 0, 0], expected)
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_attention_module_shapes_and_gradients():
    attn = Attention(16, num_heads=4, qkv_bias=False)
    x = torch.randn(3, 5, 16, requires_grad=True)
    out, probs = attn(x, need_weights=True)
    assert out.shape == (3, 5, 16) and probs.shape == (3, 4, 5, 5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert attn.qkv.bias is None and attn.proj.bias is not None


def test_attention_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, num_heads=4)


def test_block_residual_paths_and_drop_path_in_eval():
    block = TransformerBlock(8, 2, mlp_ratio=2.0, drop_path=0.5).eval()
    x = torch.randn(2, 4, 8)
    y1, _ = block(x)
    y2, _ = block(x)
    torch.testing.assert_close(y1, y2)  # drop-path and dropout are off in eval
    assert not torch.allclose(y1, x)


def test_sincos_1d_interleaves_sin_and_cos():
    code = sincos_1d(torch.tensor([0, 1]), 8)
    torch.testing.assert_close(code[0], torch.tensor([0.0, 1.0] * 4))
    omega = 10000 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(code[1, 0::2], torch.sin(omega).float())
    torch.testing.assert_close(code[1, 1::2], torch.cos(omega).float())


def test_sincos_2d_spec_check_values():
    # docs/seeds/mini_vit.md: dim 96, grid 8x8, first half encodes the column x, second the row y.
    pe = sincos_2d(8, 8, 96)
    assert pe.shape == (64, 96)
    torch.testing.assert_close(pe[1, :4], torch.tensor([0.8415, 0.5403, 0.6298, 0.7768]), atol=1e-4, rtol=0)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 48))
    # token index = 8y + x: patch (x=0, y=1) has the x=0 code in the first half, the x=1 code in the second
    torch.testing.assert_close(pe[8, :48], pe[0, :48])
    torch.testing.assert_close(pe[8, 48:], pe[1, :48])


def test_sincos_2d_rejects_dim_not_divisible_by_4():
    with pytest.raises(ValueError):
        sincos_2d(4, 4, 10)
