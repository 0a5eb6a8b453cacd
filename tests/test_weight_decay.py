"""Which QAViT parameters get weight decay (docs/seeds/qavit.md): the position table, the bank
tokens, the bank's write gate, the fusion logits, biases and norm weights get none; the original
decayed every parameter, which recipe.optimizer.exclude_from_decay=false restores."""

import pytest

from vitlab.config import OptimizerConfig
from vitlab.models import create_model
from vitlab.optim import build_optimizer

SMALL = dict(num_classes=10, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_groups=4, bank_size=4)


def _groups(net, **optimizer):
    opt = build_optimizer(net, OptimizerConfig(lr=5e-4, weight_decay=0.05, **optimizer))
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    # The faithful bank's gateway is frozen (it never received gradients in the original): not optimized.
    return decayed, plain, {n for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("faithful", [False, True])
def test_qavit_no_decay_group_is_the_documented_set(faithful, one_thread):
    net = create_model("qavit_tiny_32", faithful=faithful, **SMALL)
    decayed, plain, every = _groups(net)
    documented = {"pos_embed", "token_bank.keys", "token_bank.values", "blocks.0.fusion.alpha", "blocks.1.fusion.alpha"}
    if not faithful:  # the functional bank's write gate; the faithful bank has no such parameter
        documented.add("token_bank.write_gate")
    one_dim = {n for n, p in net.named_parameters() if p.ndim <= 1 and p.requires_grad}  # biases, norm weights
    assert documented <= every
    assert plain == documented | one_dim
    assert decayed == every - plain and not decayed & plain
    assert all(p.ndim >= 2 for n, p in net.named_parameters() if n in decayed)
    assert any(n.startswith("patch_embed") for n in decayed)
    assert "head.weight" in decayed and "head.bias" in plain


def test_qavit_original_decays_every_parameter(one_thread):
    net = create_model("qavit_tiny_32", **SMALL)
    decayed, plain, every = _groups(net, exclude_from_decay=False)
    assert decayed == every and not plain
