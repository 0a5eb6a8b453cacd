"""timm's model API on every vitlab network: classifier access and reset, layer groups for timm's
layer-wise LR decay, gradient checkpointing, one prefix-token attribute, and a pure forward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from timm.optim import create_optimizer_v2

from vitlab.config import OptimizerConfig
from vitlab.models import create_model
from vitlab.optim import build_optimizer

ROOT = Path(__file__).resolve().parent.parent

#: One small build per vitlab family (timm's baselines have the API from timm).
TINY = {
    "vit": dict(img_size=32, embed_dim=32, depth=3, num_heads=2, num_classes=5),
    "vit_diff_entropy": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "vit_cpe": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "mini_vit": dict(embed_dim=32, depth=3, num_heads=2, num_classes=5),
    "outgrid_7m": dict(dims=(8, 16, 16, 16), num_heads=(2, 2, 2, 2), outlook_heads=(2, 2, 2, 2),
                       depths=(1, 1, 1, 1), stem_dim=8, num_classes=5),
    "outgrid_b": dict(dims=(8, 16, 16, 16), num_heads=(2, 2, 2, 2), outlook_heads=(2, 2, 2, 2),
                      depths=(1, 1, 1, 1), stem_dim=8, num_classes=5),
    "qavit_tiny_32": dict(embed_dim=32, depth=2, num_heads=2, num_groups=4, bank_size=4, num_classes=5),
}
#: The networks the issue names, at their registered sizes.
NAMED = ["vit", "mini_vit", "outgrid_7m", "qavit_tiny_32"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMED)
def test_timm_layer_decay_on_the_registered_size(name):
    net = create_model(name)
    opt = create_optimizer_v2(net, "adamw", lr=1e-3, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    # every parameter once; the head at full LR, the stem lowest, one scale per layer group
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in net.parameters())
    assert scales[-1] == 1.0 and len(scales) >= 4 and scales[0] < 0.75 ** 3
    head = {id(p) for p in net.get_classifier().parameters()}
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups if {id(p) for p in g["params"]} & head)


def test_recipe_layer_decay_scales_the_group_lrs():
    net = create_model("vit", **TINY["vit"])
    opt = build_optimizer(net, OptimizerConfig(lr=1e-3, layer_decay=0.5))
    lrs = {round(g["lr"], 12) for g in opt.param_groups}
    # stem, 3 blocks (the final norm joins the last, as in timm's ViT), head: 0.5^4 ... 1 (times the LR)
    assert lrs == {round(1e-3 * 0.5**k, 12) for k in range(5)}
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in opt.param_groups)


@pytest.mark.parametrize("name", sorted(TINY))
def test_classifier_get_and_reset(name):
    net = create_model(name, **TINY[name]).eval()
    assert net.get_classifier() is net.head and net.head.out_features == 5
    x = torch.randn(2, 3, 32, 32)
    net.reset_classifier(7)
    assert net.num_classes == 7 and net(x).shape == (2, 7)
    net.reset_classifier(0)
    assert net(x).shape == (2, net.num_features * max(1, net.num_prefix_tokens if name == "mini_vit" else 1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_one_prefix_token_attribute(name):
    net = create_model(name, **TINY[name])
    expected = {"vit": 1, "vit_diff_entropy": 1, "vit_cpe": 1, "mini_vit": 2}.get(name, 0)
    assert net.num_prefix_tokens == expected
    assert not hasattr(net, "num_cls_tokens")


@pytest.mark.parametrize("name", sorted(TINY))
def test_grad_checkpointing_gives_identical_gradients(name):
    torch.manual_seed(0)
    net = create_model(name, **TINY[name], drop_path_rate=0.1).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))

    def grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.set_grad_checkpointing(checkpointing)
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout / drop-path draws on both sides
        logits = net(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain_logits, plain = grads(False)
    ckpt_logits, ckpt = grads(True)
    torch.testing.assert_close(ckpt_logits, plain_logits, atol=0, rtol=0)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("name", ["vit_diff_entropy", "qavit_tiny_32"])
def test_aux_comes_back_from_the_forward_and_leaves_no_state(name):
    net = create_model(name, **TINY[name]).train()
    before = {k: v for k, v in vars(net).items() if not k.startswith("_")}
    logits, aux = net.forward_with_aux(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and aux and all(v.dim() == 0 and not v.requires_grad for v in aux.values())
    expected = {"vit_diff_entropy": {"entropy_mean", "lambda_mean"}, "qavit_tiny_32": {"bank_norm"}}[name]
    assert set(aux) == expected
    after = {k: v for k, v in vars(net).items() if not k.startswith("_")}
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    for module in net.modules():  # no module kept a tensor from the forward
        assert not any(isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)
                       for k, v in vars(module).items() if not k.startswith("_"))


def _forward_assignments(path: Path) -> list[str]:
    """``self.<attr> = ...`` inside any ``forward``/``_forward*`` method of a file."""
    found = []
    for cls in ast.walk(ast.parse(path.read_text())):
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and (fn.name == "forward" or fn.name.startswith(("_forward", "forward_"))):
                for node in ast.walk(fn):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                    for t in targets:
                        for sub in ast.walk(t):
                            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                                found.append(f"{path.name}:{sub.lineno} {cls.name}.{fn.name} sets self.{sub.attr}")
    return found


def test_no_forward_writes_module_state():
    files = sorted((ROOT / "vitlab" / "layers").glob("*.py")) + sorted((ROOT / "vitlab" / "models").glob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in _forward_assignments(f)]
    assert not found, found


def test_the_structural_check_can_fail(tmp_path):
    bad = tmp_path / "stash.py"
    bad.write_text("class Net:\n    def forward(self, x):\n        self.last, y = x, x\n        return y\n")
    assert _forward_assignments(bad) == ["stash.py:3 Net.forward sets self.last"]


@pytest.mark.parametrize("name, pool, init", [
    ("vit", "token", "zeros"), ("mini_vit", "token", "default"), ("outgrid_7m", "avg", "default"),
    ("qavit_tiny_32", "avg", "trunc_normal"),
])
def test_reset_classifier_takes_the_familys_pool_and_starts_the_head_as_the_family_does(name, pool, init):
    net = create_model(name, **TINY[name])
    torch.manual_seed(0)
    net.reset_classifier(9, pool)
    assert net.get_classifier() is net.head and net.head.out_features == 9 and net.num_classes == 9
    weight, bias = net.head.weight, net.head.bias
    if init == "zeros":
        assert not weight.any() and not bias.any()
    elif init == "trunc_normal":
        assert not bias.any() and 0.01 < float(weight.std()) < 0.03
    else:
        assert bias.any()  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases
    with pytest.raises(ValueError, match=rf"^{type(net).__name__} pools with .*'{pool}'.*; global_pool='max' is not supported"):
        net.reset_classifier(3, "max")
    assert net.head.out_features == 9  # a refused reset leaves the head as it was
