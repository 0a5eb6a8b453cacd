"""QAViT's faster computations against the plain ones they replace: the same values and gradients.

Each test writes out the old computation next to the new module, on small shapes, so a speed-up
cannot change the math."""

from __future__ import annotations

import pytest
import torch

import vitlab.layers.attention as attention_module
import vitlab.layers.branch_attention as branch_module
from vitlab.layers.attention import attend
from vitlab.layers.branch_attention import branch_attend
from vitlab.layers.channel_group_attention import ChannelGroupTokenAttention
from vitlab.layers.token_bank import TokenBank
from vitlab.layers.window_attention import WindowBankAttention, window_partition, window_reverse
from vitlab.models import create_model

SMALL = dict(
    num_classes=10, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_groups=4, bank_size=4,
    drop_path_rate=0.0,
)


def leaves(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.randn(*shape, requires_grad=True) for shape in shapes]


def grads_of(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    weight = torch.randn_like(output)  # a random cotangent: every output element's gradient counts
    return list(torch.autograd.grad((output * weight).sum(), inputs))


def test_branch_attend_in_pieces_equals_one_call(monkeypatch, one_thread):
    """On CPU the plain-ops path runs in batch pieces; values, weights and gradients are those of a
    single :func:`attend` call, with a per-sample mask, and with dropout engaged (a deterministic
    stand-in for the random mask, so the two sides can be compared)."""
    monkeypatch.setattr(branch_module, "CPU_SCORE_CHUNK", 2 * 3 * 5 * 7)  # 2 of the 7 samples a piece: 4 pieces
    monkeypatch.setattr(attention_module, "dropout", lambda x, p: x * torch.linspace(0, 2, x.shape[-1]))
    assert branch_module._cpu_piece_size(torch.empty(7, 3, 5, 4), torch.empty(7, 3, 7, 4), 0.1, False) == 2
    q, k, v = leaves((7, 3, 5, 4), (7, 3, 7, 4), (7, 3, 7, 4))
    mask = torch.rand(7, 1, 1, 7) > 0.3
    mask[..., 0] = True  # every row keeps a key
    for kwargs in (dict(need_weights=True), dict(need_weights=True, attn_mask=mask), dict(dropout_p=0.1)):
        out, probs = branch_attend(q, k, v, **kwargs)
        ref_out, ref_probs = attend(q, k, v, **kwargs)
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
        if kwargs.get("need_weights"):
            torch.testing.assert_close(probs, ref_probs, rtol=1e-6, atol=1e-6)
        else:
            assert probs is None
        torch.manual_seed(1)
        new = grads_of(branch_attend(q, k, v, **kwargs)[0], [q, k, v])
        torch.manual_seed(1)
        old = grads_of(attend(q, k, v, **kwargs)[0], [q, k, v])
        for g, ref in zip(new, old):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_branch_attend_keeps_small_and_fused_calls_whole():
    q, k = torch.empty(256, 4, 49, 64), torch.empty(256, 4, 65, 64)
    assert branch_module._cpu_piece_size(q, k, 0.0, False) == 256  # SDPA: nothing materialised
    assert branch_module._cpu_piece_size(q, k, 0.1, False) == branch_module.CPU_SCORE_CHUNK // (4 * 49 * 65) == 82
    assert branch_module._cpu_piece_size(q[:2], k[:2], 0.1, True) == 2  # small enough: one call


def old_pool(bank: TokenBank, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's pooling as first written: compress every token, then pool."""
    normed = bank.gateway_norm(tokens)
    gate = bank.gateway_gate(normed).softmax(dim=1)
    return gate.transpose(1, 2) @ bank.gateway_compress(normed), gate.transpose(1, 2) @ normed


def test_bank_pool_compresses_after_pooling(one_thread):
    torch.manual_seed(0)
    bank = TokenBank(16, num_tokens=4)
    torch.nn.init.normal_(bank.gateway_compress.bias)  # a bias that must come through the pooling
    (tokens,) = leaves((3, 10, 16))
    new, old = bank.pool(tokens), old_pool(bank, tokens)
    params = [tokens, *bank.gateway_norm.parameters(), *bank.gateway_gate.parameters(),
              *bank.gateway_compress.parameters()]
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.manual_seed(2)
    new_grads = grads_of(torch.cat(new, -1), params)
    torch.manual_seed(2)
    old_grads = grads_of(torch.cat(old, -1), params)
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def old_window_forward(m: WindowBankAttention, x, bank_k, bank_v):
    """The window branch as first written (no padding, no compression): the bank copied per window
    before the concatenation."""
    B = x.shape[0]
    heads, hd = m.num_heads, m.head_dim
    windows = window_partition(x, m.grid, m.window_size)
    num_windows, L = windows.shape[0] // B, windows.shape[1]
    q, k, v = m.qkv(windows).view(-1, L, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)

    def per_window(t):
        t = t.view(B, 1, -1, heads, hd).expand(-1, num_windows, -1, -1, -1)
        return t.reshape(B * num_windows, -1, heads, hd).transpose(1, 2)

    k = torch.cat((k, per_window(bank_k)), dim=2)
    v = torch.cat((v, per_window(bank_v)), dim=2)
    out, probs = attend(q, k, v, need_weights=True)
    out = m.proj(out.transpose(1, 2).reshape(-1, L, x.shape[-1]))
    return window_reverse(out, m.grid, m.window_size), probs.view(B, num_windows, heads, L, -1)


def test_window_bank_concatenation_equals_per_window_copies(one_thread):
    torch.manual_seed(0)
    m = WindowBankAttention(16, 2, (6, 6), window_size=3).eval()
    x, bank_k, bank_v = leaves((2, 36, 16), (2, 4, 16), (2, 4, 16))
    out, probs = m(x, bank_k, bank_v, need_weights=True)
    ref_out, ref_probs = old_window_forward(m, x, bank_k, bank_v)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)
    inputs = [x, bank_k, bank_v, *m.parameters()]
    torch.manual_seed(2)
    new = grads_of(m(x, bank_k, bank_v)[0], inputs)
    torch.manual_seed(2)
    old = grads_of(old_window_forward(m, x, bank_k, bank_v)[0], inputs)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("faithful", [False, True])
def test_fused_inference_copy_gives_the_eager_logits(faithful, one_thread):
    """``prepare_for_inference(net, "fused")`` folds the fusion's weights and LayerNorm affines, and
    ``norm2``'s, into the Linear each feeds; the logits stay those of the eager network."""
    from vitlab.inference import prepare_for_inference

    torch.manual_seed(0)
    net = create_model("qavit_tiny_32", faithful=faithful, **SMALL).eval()
    with torch.no_grad():  # affines and fusion logits away from their init, so the folding shows
        for name, p in net.named_parameters():
            if "norm" in name or name.endswith("alpha"):
                p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(3, 3, 32, 32)
    fused = prepare_for_inference(net, "fused")
    block, original = fused.blocks[0], net.blocks[0]
    assert block.fusion.folded and not block.norm2.elementwise_affine
    assert not any(n.elementwise_affine for n in block.fusion.norms)
    assert original.norm2.elementwise_affine and not original.fusion.folded  # the network itself is untouched
    torch.testing.assert_close(fused.fusion_weights(), net.fusion_weights())
    with torch.inference_mode():
        eager_logits, fused_logits = net(x), fused(x)
    torch.testing.assert_close(fused_logits, eager_logits, rtol=1e-4, atol=1e-4)


def old_channel_group_forward(m: ChannelGroupTokenAttention, x, bank_k, bank_v, dropout_p):
    """The channel-group branch as first written: keys and values folded, the bank copied per group."""
    B, N, _ = x.shape
    G, heads = m.num_groups, m.num_heads
    hd = m.inner_dim // heads
    groups = x.view(B, N, G, m.group_dim)

    def fold(t):
        return t.view(B, N, G, heads, hd).permute(0, 2, 3, 1, 4).reshape(B * G, heads, N, hd)

    def bank_heads(t):
        t = t.view(B, 1, t.shape[1], heads, hd).expand(-1, G, -1, -1, -1)
        return t.reshape(B * G, -1, heads, hd).transpose(1, 2)

    q, k, v = fold(m.q(groups)), fold(m.k(groups)), fold(m.v(groups))
    k = torch.cat((k, bank_heads(m.bank_k(bank_k))), dim=2)
    v = torch.cat((v, bank_heads(m.bank_v(bank_v))), dim=2)
    out, _ = attend(q, k, v, dropout_p=dropout_p)
    out = out.view(B, G, heads, N, hd).permute(0, 3, 1, 2, 4).reshape(B, N, G * m.inner_dim)
    return m.proj(out)


@pytest.mark.parametrize("training", [False, True])
def test_channel_group_layouts_equal_the_folded_copies(training, monkeypatch, one_thread):
    """Training on CPU (plain ops) stores each head's keys and values transposed; evaluation (SDPA)
    keeps them as they are. Both give the first version's values and gradients (a deterministic
    stand-in for the dropout mask, so the two sides can be compared)."""
    monkeypatch.setattr(attention_module, "dropout", lambda x, p: x * torch.linspace(0, 2, x.shape[-1]))
    torch.manual_seed(0)
    m = ChannelGroupTokenAttention(32, 2, num_groups=4, attn_drop=0.1).train(training)
    x, bank_k, bank_v = leaves((2, 9, 32), (2, 4, 32), (2, 4, 32))
    inputs = [x, bank_k, bank_v, *m.parameters()]
    dropout_p = 0.1 if training else 0.0
    torch.manual_seed(2)
    new_out = m(x, bank_k, bank_v)[0]
    new = grads_of(new_out, inputs)
    torch.manual_seed(2)
    old_out = old_channel_group_forward(m, x, bank_k, bank_v, dropout_p)
    old = grads_of(old_out, inputs)
    torch.testing.assert_close(new_out, old_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
