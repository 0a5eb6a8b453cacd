"""A family defined in this file alone, with an attention layout vitlab has never seen, goes through
training (softmax check and attention dump) and ``vitlab.analyze`` without any edit in vitlab/: the
registry entry, the config dataclass and the map's layout are all here."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from conftest import SMOKE, compose_config
from test_analyze import compose_analyze
from vitlab.analyze import analyze
from vitlab.layers.attention_maps import AttentionMap, LocalityRows, grid_positions_2d
from vitlab.models._registry import register_model, unregister_model
from vitlab.registry_nodes import store_registry_nodes

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class RowMap(AttentionMap):
    """Row attention: ``(B, heads, h, w, w)``, each patch attends to the patches of its own row.
    Distance: the column offset, in patches."""

    layout: str = "rows"

    def locality_rows(self, num_images: int) -> LocalityRows:
        h, w = self.grid
        cols = torch.arange(w, dtype=torch.float32)
        border = (cols == 0) | (cols == w - 1)
        return LocalityRows(self.weights, (cols[:, None] - cols[None, :]).abs(), border, "patches (row offset)", "rows")

    def heatmap(self) -> tuple[torch.Tensor, str]:
        centre = self.grid[1] // 2
        return self.weights[:, :, :, centre].float().mean(1), "row attention of each row's centre patch (head mean)"


@dataclass(frozen=True)
class RowNetConfig:
    num_classes: int = 10
    img_size: int = 32
    patch_size: int = 8
    dim: int = 16
    num_heads: int = 2


class RowNet(nn.Module):
    """Patch embedding, one block of attention along the rows of the patch grid, mean pool, head."""

    def __init__(self, cfg: RowNetConfig) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.num_prefix_tokens = cfg, cfg.num_classes, 0
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, h, w, dim)
        B, h, w, C = t.shape
        heads = self.cfg.num_heads
        q, k, v = self.qkv(t).view(B, h, w, 3, heads, C // heads).permute(3, 0, 4, 1, 2, 5).unbind(0)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (C // heads) ** 0.5, dim=-1)  # (B, heads, h, w, w)
        return t + (weights @ v).permute(0, 2, 3, 1, 4).reshape(B, h, w, C), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._rows(x)[0].mean(dim=(1, 2)))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, AttentionMap]:
        weights = self._rows(x)[1]
        return {"rows.0": RowMap(weights, grid=tuple(weights.shape[2:4]), dim=-1)}


@pytest.fixture
def toy_family():
    register_model("toy_rows", RowNetConfig(), RowNet)
    store_registry_nodes()
    yield "toy_rows"
    unregister_model("toy_rows")


def test_a_new_layout_trains_dumps_and_is_analysed(toy_family, tmp_path):
    from vitlab.training import train

    run = tmp_path / "run"
    cfg = compose_config([*SMOKE, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false",
                          "callbacks.attention_dump.every_n_epochs=1", "callbacks.attention_dump.num_images=2"], output_dir=run)
    with open_dict(cfg):  # the toy family has no conf/model file: its net node straight from the registry
        cfg.model = OmegaConf.create({"_target_": "vitlab.families.ImageClassifier",
                                      "net": {"name": toy_family, "num_classes": cfg.data.num_classes}})
    train(cfg)  # validation ran the softmax check on the toy map (it raises above its tolerance)

    dump = torch.load(run / "attention" / "epoch_001" / "attention_maps.pt", weights_only=True)
    assert dump["maps"]["rows.0"].shape == (2, 2, 4, 4, 4) and dump["layouts"]["rows.0"]["layout"] == "rows"
    assert (run / "attention" / "epoch_001" / "rows.0.png").is_file()

    out = tmp_path / "analysis"
    rows = analyze(compose_analyze(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "num_images=4", "batch_size=4",
                                   "overlay_images=2", out_dir=out))
    mean = next(r for r in rows if r["head"] == "mean")
    assert (mean["map"], mean["kind"], mean["keys"], mean["n_images"]) == ("rows.0", "rows", 4, 4)
    # uniform attention over 4 columns: mean |i - j| = (0+1+2+3 + 1+0+1+2 + 2+1+0+1 + 3+2+1+0) / 16
    assert mean["mad_uniform"] == pytest.approx(20 / 16) and 0 <= mean["mad_mean"] <= 3
    assert 0 < mean["hn_mean"] <= 1 + 1e-6
    assert json.loads((out / "mad_metrics.json").read_text())["model"] == toy_family
    assert (out / "overlays" / "rows.0.png").is_file()

    from vitlab.runs import load_run

    module = load_run(run / "checkpoints" / "last.ckpt").module
    maps = module.attention_maps(torch.randn(2, 3, 32, 32))
    assert module.attention_normalisation_error(maps) < 1e-5  # read from the map's own axis (dim=-1)
    maps["rows.0"].weights = maps["rows.0"].weights * 1.5
    assert module.attention_normalisation_error(maps) > 0.4


def test_the_toy_map_is_measured_from_its_metadata_alone():
    from vitlab.analyze import measure_map

    weights = torch.zeros(1, 1, 2, 4, 4)
    weights[..., torch.arange(4), (torch.arange(4) + 1) % 4] = 1.0  # each patch looks at its right neighbour
    result = measure_map("anything", RowMap(weights, grid=(2, 4)), num_images=1)
    assert result["kind"] == "rows" and result["mad"].item() == pytest.approx((1 + 1 + 1 + 3) / 4)
    assert result["hn"].item() == pytest.approx(0.0, abs=1e-6)
    assert grid_positions_2d(2, 4).shape == (8, 2)
