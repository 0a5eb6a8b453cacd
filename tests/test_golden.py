"""Golden outputs of every registered network, pinned before the model-contract refactor.

For each network: the eval-mode logits and pre-logits (the pooled features the head reads) on a fixed
input, built at a fixed seed, and its parameter count. The pre-logits matter because some heads start
at zero (ViT), which would make the logits alone blind to everything before the head.

**Tolerance.** The fixture holds float32 values computed on one CPU. Another CPU computes the same
network in another order (SIMD width, BLAS blocking, FMA), so its float32 result differs in the last
bits, and by more where the reductions are long and the network deep. Both results lie within their
float32 rounding error of the exact value, so the tolerance is that error, measured for this network on
this input: the largest difference between this machine's float32 and float64 outputs (float64 is
exact to ~1e-15 here), times :data:`ROUNDING_FACTOR`. The fixture's own rounding error is of the same
size (two float32 results differ by at most the sum of their errors), and the factor leaves room for a
CPU whose kernels round a few times worse than this one's. On an Intel Xeon (AVX-512), the fixture,
recorded on an AMD EPYC, lay within 2.3x that machine's rounding error for every network, while a
1e-3 change of the first weight moved the outputs by 11x to 4800x it (the tests below show that each
kind of real change fails).

Regenerate (only when a change of the numbers is intended and explained in the commit):
``OMP_NUM_THREADS=1 python tests/test_golden.py``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from vitlab.models import create_model, list_models

FIXTURE = Path(__file__).parent / "fixtures" / "golden_logits.json"  # text: float32 values round-trip exactly
BATCH = 2
IMG_SIZE = 32
OUTPUTS = ("pre_logits", "logits")
#: How many times its own float32 rounding error a network's outputs may differ from the fixture.
ROUNDING_FACTOR = 8.0

#: Every network runs on 32 px images: these are built for them (fast on a CPU); the rest are
#: registered at 32 px.
SMALL = {
    **{name: {"img_size": 32} for name in list_models("vit*")},
    **{name: {"img_size": 32} for name in ("outgrid_tin22m", "outgrid_tinc")},
    **{name: {"img_size": 32} for name in ("qavit_tiny", "qavit_small")},
}
#: The registered names the fixture was recorded under, mapped to their current names after a rename.
RENAMED = {
    "deit_tiny_p4": "deit_tiny", "deit_small_p4": "deit_small", "swin_tiny_p2": "swin_tiny",
    "maxvit_tiny_32": "maxvit_tiny", "maxvit_nano_32": "maxvit_nano", "resnet18_cifar": "resnet18",
    "resnet50_cifar": "resnet50", "convnext_tiny_32": "convnext_tiny", "efficientnetv2_s_32": "efficientnetv2_s",
}
#: Names without a record of their own, with the recorded network they must reproduce: an alias is
#: the same config; outgrid_svhn is outgrid_14m at 10 classes with more drop-path (which eval mode does
#: not use), so its pre-logits are outgrid_14m's and only its head differs.
ADDED = {"outgrid": "outgrid_7m", "outgrid_svhn": "outgrid_14m"}
#: One network of each family, for the checks that a real change fails the comparison.
FAMILIES = {"clear-vit": "vit_rope_mixed", "mini-vit": "mini_vit", "outgrid": "outgrid_7m",
            "qavit": "qavit_tiny_32", "timm": "deit_tiny"}


def compute(name: str, dtype: torch.dtype = torch.float32,
            change: Callable[[nn.Module], None] | None = None) -> dict[str, torch.Tensor | int]:
    """The network's outputs on the fixed input, in ``dtype``; ``change`` edits the freshly built
    network first (the tests of what the comparison catches)."""
    torch.manual_seed(0)
    net = create_model(name, **SMALL.get(name, {})).eval()
    if change is not None:
        change(net)
    net = net.to(dtype)
    x = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        pre = net.forward_head(net.forward_features(x), pre_logits=True)
        logits = net(x)
    return {"logits": logits.clone(), "pre_logits": pre.clone(), "params": sum(p.numel() for p in net.parameters())}


@functools.cache
def outputs(name: str) -> dict[str, torch.Tensor | int]:
    return compute(name)


@functools.cache
def rounding_error(name: str) -> dict[str, float]:
    """Per output, the largest difference between this machine's float32 and float64 results."""
    exact, single = compute(name, torch.float64), outputs(name)
    return {k: (single[k].double() - exact[k]).abs().max().item() for k in OUTPUTS}


def mismatches(got: dict, expected: dict, error: dict[str, float]) -> list[str]:
    """What of ``got`` differs from ``expected`` beyond the rounding error: empty when they match."""
    found = [f"params {got['params']} != {expected['params']}"] if got["params"] != expected["params"] else []
    for k in OUTPUTS:
        if got[k].shape != expected[k].shape:
            found.append(f"{k}: shape {tuple(got[k].shape)} != {tuple(expected[k].shape)}")
            continue
        diff = (got[k].double() - expected[k].double()).abs().max().item()
        if diff > ROUNDING_FACTOR * error[k]:
            found.append(f"{k}: max difference {diff:.3g} > {ROUNDING_FACTOR:g} x rounding error {error[k]:.3g}")
    return found


def _golden() -> dict[str, dict]:
    if not FIXTURE.exists():
        return {}
    raw = json.loads(FIXTURE.read_text())
    return {name: {k: (torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v) for k, v in entry.items()}
            for name, entry in raw.items()}


@functools.cache
def golden(name: str) -> dict:
    """The record a current registry name must reproduce."""
    records = _golden()
    recorded = {RENAMED.get(r, r): r for r in records}
    return records[recorded.get(name) or recorded[ADDED[name]]]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_network_is_pinned():
    recorded = {RENAMED.get(name, name) for name in _golden()}
    assert recorded | set(ADDED) == set(list_models())


@pytest.mark.parametrize("name", sorted(ADDED))
def test_added_names_reproduce_their_recorded_network(name: str):
    got, expected = outputs(name), golden(name)
    if got["logits"].shape != expected["logits"].shape:  # another head: only the features must agree
        got = {**expected, "pre_logits": got["pre_logits"]}
    assert not mismatches(got, expected, rounding_error(name))


@pytest.mark.parametrize("name", sorted(set(list_models()) - set(ADDED)))
def test_golden_outputs(name: str):
    assert not mismatches(outputs(name), golden(name), rounding_error(name))


# ----------------------------------------------------------------------------- what the tolerance catches
def _nudge_first_weight(net: nn.Module) -> None:
    """One weight, the first element of the first parameter (the stem: the change that reaches the
    outputs most diluted), moved by 1e-3."""
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3


def _last_norm_starts_at(value: float) -> Callable[[nn.Module], None]:
    """A changed init: the last normalisation layer's gain starts at ``value`` instead of 1."""

    def change(net: nn.Module) -> None:
        norms = [m for m in net.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm))]
        assert norms, "no normalisation layer to change"
        with torch.no_grad():
            norms[-1].weight.fill_(value)

    return change


@pytest.mark.parametrize("name", sorted(list_models()))
def test_one_weight_moved_by_1e_3_fails(name: str):
    found = mismatches(compute(name, change=_nudge_first_weight), golden(name), rounding_error(name))
    assert any(line.startswith("pre_logits") for line in found), found


@pytest.mark.parametrize("name", sorted(FAMILIES.values()))
def test_a_changed_init_fails(name: str):
    assert mismatches(compute(name, change=_last_norm_starts_at(1.001)), golden(name), rounding_error(name))


@pytest.mark.parametrize("name", sorted(FAMILIES.values()))
def test_a_swapped_activation_fails(name: str, monkeypatch):
    """GELU's tanh approximation instead of the exact GELU (they differ by less than 1e-3)."""
    exact = torch.nn.functional.gelu
    calls = []

    def tanh_gelu(x, approximate="none"):
        calls.append(approximate)
        return exact(x, approximate="tanh")

    monkeypatch.setattr(torch.nn.functional, "gelu", tanh_gelu)
    got = compute(name)
    monkeypatch.undo()
    assert calls, f"{name} calls no GELU through torch.nn.functional"
    assert mismatches(got, golden(name), rounding_error(name))


if __name__ == "__main__":
    torch.set_num_threads(1)
    records = {}
    for model_name in list_models():
        records[model_name] = compute(model_name)
        print(model_name, records[model_name]["params"], tuple(records[model_name]["logits"].shape), file=sys.stderr)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({name: {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in entry.items()}
                                   for name, entry in records.items()}))
