"""Golden outputs of every registered network, pinned before the model-contract refactor.

For each network: the eval-mode logits and pre-logits (the pooled features the head reads) on a fixed
input, built at a fixed seed, and its parameter count. A refactor of the model code must reproduce
them to 1e-6 and the counts exactly. The pre-logits matter because some heads start at zero (ViT),
which would make the logits alone blind to everything before the head.

Regenerate (only when a change of the numbers is intended and explained in the commit):
``OMP_NUM_THREADS=1 python tests/test_golden.py``.
"""

from __future__ import annotations

import json

import sys
from pathlib import Path

import pytest
import torch

from vitlab.models import create_model, list_models

FIXTURE = Path(__file__).parent / "fixtures" / "golden_logits.json"  # text: float32 values round-trip exactly
BATCH = 2
IMG_SIZE = 32

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
#: Names added after the fixture was recorded, with the recorded network they must reproduce: an
#: alias is the same config; outgrid_svhn is outgrid_14m at 10 classes with more drop-path (which eval
#: mode does not use), so its pre-logits are outgrid_14m's and only its head differs.
ADDED = {"outgrid": "outgrid_7m", "outgrid_svhn": "outgrid_14m"}


def compute(name: str) -> dict[str, torch.Tensor | int]:
    torch.manual_seed(0)
    net = create_model(name, **SMALL.get(name, {})).eval()
    x = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = net.forward_head(net.forward_features(x), pre_logits=True)
        logits = net(x)
    return {"logits": logits.clone(), "pre_logits": pre.clone(), "params": sum(p.numel() for p in net.parameters())}


def _golden() -> dict[str, dict]:
    if not FIXTURE.exists():
        return {}
    raw = json.loads(FIXTURE.read_text())
    return {name: {k: (torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v) for k, v in entry.items()}
            for name, entry in raw.items()}


@pytest.fixture(autouse=True)
def _one_thread():
    # Thread count can change the summation order of a matmul; the fixture was recorded on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_network_is_pinned():
    recorded = {RENAMED.get(name, name) for name in _golden()}
    assert recorded | set(ADDED) == set(list_models())


@pytest.mark.parametrize("name, recorded_name", sorted(ADDED.items()))
def test_added_names_reproduce_their_recorded_network(name: str, recorded_name: str):
    expected, got = _golden()[recorded_name], compute(name)
    torch.testing.assert_close(got["pre_logits"], expected["pre_logits"], atol=1e-6, rtol=1e-6)
    if got["logits"].shape == expected["logits"].shape:
        torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-6, rtol=1e-6)
        assert got["params"] == expected["params"]


@pytest.mark.parametrize("recorded_name", sorted(_golden()))
def test_golden_outputs(recorded_name: str):
    expected = _golden()[recorded_name]
    got = compute(RENAMED.get(recorded_name, recorded_name))
    assert got["params"] == expected["params"]
    torch.testing.assert_close(got["pre_logits"], expected["pre_logits"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-6, rtol=1e-6)


if __name__ == "__main__":
    torch.set_num_threads(1)
    golden = {}
    for name in list_models():
        golden[name] = compute(name)
        print(name, golden[name]["params"], tuple(golden[name]["logits"].shape), file=sys.stderr)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({name: {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in entry.items()}
                                   for name, entry in golden.items()}))
