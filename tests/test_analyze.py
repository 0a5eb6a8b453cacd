"""vitlab.analyze: MAD and normalised entropy on hand-built maps of every layout, on real networks'
maps, and end to end on a short run's checkpoint."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import CONF_DIR, SMOKE, compose_config
from vitlab.analyze import LocalityStats, analyze, measure_map, overlay_heatmaps, where
from vitlab.config import register_configs
from vitlab.errors import ConfigError
from vitlab.layers.attention_maps import GridMap, KernelMap, TokenMap
from vitlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def one_hot_rows(targets: list[int], keys: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(targets), keys).float()


# ----------------------------------------------------------------------------- hand-built maps
@pytest.mark.parametrize("d", [1, 2, 3])
def test_token_map_one_hot_at_distance_d_has_mad_d_and_zero_entropy(d):
    # 4x4 patches plus one CLS token: every patch (r, c) attends only to (r, (c + d) mod 4); for d = 2
    # every query is exactly 2 patches away, for d = 1 and 3 three queries are 1 or 3 away and one 3 or 1.
    side, prefix = 4, 1
    targets = [prefix + r * side + (c + d) % side for r in range(side) for c in range(side)]
    m = torch.zeros(1, 1, prefix + side * side, prefix + side * side)
    m[0, 0, prefix:] = one_hot_rows(targets, prefix + side * side)
    m[0, 0, 0] = 1 / m.shape[-1]
    result = measure_map("blocks.0", TokenMap(m, grid=(side, side), prefix_tokens=prefix), num_images=1)
    expected = sum(abs(c - (c + d) % side) for c in range(side)) / side
    assert result["kind"] == "tokens" and result["keys"] == 16
    assert result["mad"].item() == pytest.approx(expected)
    assert (d != 2) or result["mad"].item() == pytest.approx(2.0)
    assert result["hn"].item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_attention_has_hn_one_and_the_uniform_mad():
    side = 4
    m = torch.full((2, 3, side * side, side * side), 1 / (side * side))
    result = measure_map("blocks.3", TokenMap(m, grid=(side, side)), num_images=2)
    assert torch.allclose(result["hn"], torch.ones(2, 3))
    # Mean Euclidean distance over all 16 x 16 patch pairs of a 4x4 grid.
    pos = [(r, c) for r in range(side) for c in range(side)]
    mean_dist = sum(math.dist(a, b) for a in pos for b in pos) / len(pos) ** 2
    assert result["mad_uniform"] == pytest.approx(mean_dist)
    assert torch.allclose(result["mad"], torch.full((2, 3), mean_dist))


def test_grid_map_distances_are_in_feature_map_pixels():
    # g = 2, groups of 2x2 tokens (an 4x4 map): token (i, j) attends to its horizontal neighbour, which
    # sits g = 2 pixels away on the feature map.
    g, side = 2, 2
    neighbour = [i * side + (1 - j) for i in range(side) for j in range(side)]
    m = one_hot_rows(neighbour, side * side).expand(1, g * g, 1, side * side, side * side).clone()
    result = measure_map("stages.0.blocks.1.grid", GridMap(m, grid=(side, side), stride=g), num_images=1)
    assert result["kind"] == "grid" and result["mad"].item() == pytest.approx(2.0)
    assert result["hn"].item() == pytest.approx(0.0, abs=1e-6)
    uniform = measure_map("stages.0.blocks.1.grid", GridMap(torch.full_like(m, 0.25), grid=(side, side), stride=g), num_images=1)
    # From each token the 4 keys lie 0, 1, 1, 2 steps away: 1 step on average = 2 pixels.
    assert uniform["mad_uniform"] == pytest.approx(2.0) and uniform["mad"].item() == pytest.approx(2.0)
    assert uniform["hn"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("tap, distance", [(4, 0.0), (1, 1.0), (5, 1.0), (0, 2.0), (8, 2.0)])
def test_kernel_one_hot_tap_has_its_distance_from_the_centre(tap, distance):
    m = torch.zeros(1, 2, 9, 5, 5)
    m[:, :, tap] = 1.0
    result = measure_map("stages.1.blocks.0.kernel", KernelMap(m, grid=(5, 5)), num_images=1)
    assert result["mad"].tolist() == [[pytest.approx(distance)] * 2]
    assert result["hn"].abs().max() < 1e-6
    uniform = measure_map("stages.1.blocks.0.kernel", KernelMap(torch.full_like(m, 1 / 9), grid=(5, 5)), num_images=1)
    assert uniform["mad_uniform"] == pytest.approx(12 / 9)  # 4 edge taps at 1, 4 corners at 2
    assert uniform["hn"].min().item() == pytest.approx(1.0)


def test_heads_are_measured_apart_before_averaging():
    # Head 0 attends to the corner tap, head 1 to the centre: averaging the maps first would give a
    # two-peak kernel with Hn > 0; measured per head, both are sharp (Hn 0), MADs 2 and 0.
    m = torch.zeros(3, 2, 9, 4, 4)
    m[:, 0, 0] = 1.0
    m[:, 1, 4] = 1.0
    stats = LocalityStats()
    stats.update({"stages.2.blocks.1.kernel": KernelMap(m, grid=(4, 4))}, num_images=3)
    rows = {r["head"]: r for r in stats.rows()}
    assert rows["0"]["mad_mean"] == pytest.approx(2.0) and rows["1"]["mad_mean"] == pytest.approx(0.0)
    assert rows["mean"]["mad_mean"] == pytest.approx(1.0) and rows["mean"]["hn_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows["mean"]["n_images"] == 3 and rows["mean"]["mad_std"] == pytest.approx(0.0)
    assert (rows["0"]["stage"], rows["0"]["block"], rows["0"]["mad_uniform"]) == ("2", "1", pytest.approx(4 / 3))


def test_exclude_border_keeps_interior_queries_only():
    # Border pixels attend to a corner tap, interior pixels to the centre.
    m = torch.zeros(1, 1, 9, 4, 4)
    m[..., 0, :, :] = 1.0
    m[..., 1:3, 1:3] = 0.0
    m[:, :, 4, 1:3, 1:3] = 1.0
    everything = measure_map("k", KernelMap(m, grid=(4, 4)), 1)["mad"].item()
    interior = measure_map("k", KernelMap(m, grid=(4, 4)), 1, exclude_border=True)["mad"].item()
    assert everything == pytest.approx(2.0 * 12 / 16) and interior == pytest.approx(0.0)


def test_windowed_maps_average_over_windows_per_image():
    # 2 images x 4 windows of 2x2 tokens; image 0 attends to itself (MAD 0), image 1 uniformly.
    m = torch.zeros(8, 1, 4, 4)
    m[:4] = torch.eye(4)
    m[4:] = 0.25
    result = measure_map("layers.0.blocks.0.attn", TokenMap(m, grid=(2, 2)), num_images=2)
    assert result["kind"] == "windowed tokens" and result["mad"].shape == (2, 1)
    assert result["mad"][0].item() == pytest.approx(0.0)
    assert result["mad"][1].item() == pytest.approx(result["mad_uniform"])


def test_names_give_stage_and_block():
    assert where("stages.3.blocks.0.grid") == ("3", "0")
    assert where("front.1.kernel") == ("front", "1")
    assert where("blocks.7") == ("", "7")
    assert where("layers.2.blocks.5.attn") == ("2", "5")


# ----------------------------------------------------------------------------- real networks
@pytest.mark.parametrize("name, kwargs", [("outgrid_7m", {}), ("mini_vit", {}), ("vit_diff_entropy", {"img_size": 32, "patch_size": 4}),
                                          ("swin_tiny", {})])
def test_every_layout_of_real_networks_is_measured_and_overlaid(name, kwargs):
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, **kwargs).eval()
    images = torch.randn(2, 3, 32, 32)
    if hasattr(net, "attention_maps"):
        maps = net.attention_maps(images)
    else:  # timm's networks: the baseline family types their maps
        from vitlab.families import BaselineClassifier

        module = BaselineClassifier(net={"name": name, "num_classes": 10, **kwargs}).eval()
        maps = module.attention_maps(images)
    stats = LocalityStats()
    stats.update(maps, num_images=2)
    rows = [r for r in stats.rows() if r["head"] == "mean"]
    assert rows, name
    for r in rows:
        assert 0.0 <= r["hn_mean"] <= 1.0 + 1e-5, r
        assert 0.0 <= r["mad_mean"] and r["mad_uniform"] > 0, r
    kinds = {r["kind"] for r in rows}
    heat = overlay_heatmaps(maps)
    if name == "outgrid_7m":
        assert kinds == {"kernel", "grid"} and len(rows) == 14  # 7 blocks x (kernel, grid)
        assert heat["stages.0.blocks.0.grid"][0].shape == (2, 4, 4)  # g = 8 on 32x32: 4x4 tokens
        assert heat["stages.0.blocks.0.kernel"][0].shape == (2, 32, 32)
    if name == "mini_vit":
        assert len(rows) == 9 and rows[0]["keys"] == 64  # 2 CLS tokens left out of the 66
    if name == "vit_diff_entropy":
        assert {r["map"] for r in rows} >= {"blocks.0.softmax1", "blocks.0.softmax2"}
        assert "blocks.0" not in {r["map"] for r in rows}  # A1 - lambda A2 is not a distribution
        assert heat["blocks.0.cls"][0].shape == (2, 8, 8) and "blocks.0.softmax1" not in heat
    if name == "swin_tiny":
        assert "windowed tokens" in kinds


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "run"
    from vitlab.training import train

    train(compose_config([*SMOKE, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"], output_dir=out))
    return out


def compose_analyze(*overrides: str, out_dir: Path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="analyze", overrides=["hardware=cpu", "hardware.num_workers=0", *overrides])
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    return cfg


def test_analyze_a_checkpoint_writes_metrics_and_overlays(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "analysis"
    rows = analyze(compose_analyze(f"ckpt_path={ckpt}", "num_images=20", "batch_size=8", "overlay_images=2", out_dir=out))
    assert len(rows) == 9 * (12 + 1)  # 9 blocks x (12 heads + their mean)
    saved = json.loads((out / "mad_metrics.json").read_text())
    assert saved["n_images"] == 20 and saved["model"] == "mini_vit" and len(saved["rows"]) == len(rows)
    assert all(r["n_images"] == 20 for r in rows)
    table = list(csv.DictReader((out / "mad_metrics.csv").open()))
    assert len(table) == len(rows) and {"mad_mean", "mad_std", "mad_uniform", "hn_mean", "hn_std", "hn_uniform"} <= set(table[0])
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 9 and overlays[0] == "blocks.0.cls.png"  # each block drawn by its CLS map
    with pytest.raises(ConfigError, match=r"^out_dir: .* already holds mad_metrics.json"):
        analyze(compose_analyze(f"ckpt_path={ckpt}", "num_images=2", out_dir=out))


def test_cli_one_line_for_a_missing_checkpoint(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "vitlab.analyze", "ckpt_path=nope.ckpt", "hardware=cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: ckpt_path: no checkpoint file at {tmp_path / 'nope.ckpt'}; give a .ckpt from a run's checkpoints/ folder (or run_dir=<run folder> to continue a run)"]


def test_analyze_an_outgrid_checkpoint_kernel_and_grid_rows_and_overlays(tmp_path):
    from vitlab.training import train

    run = tmp_path / "outgrid"
    train(compose_config([*SMOKE, "model=outgrid", "recipe.batch_size=4", "data.train_size=12", "data.val_size=8",
                          "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"], output_dir=run))
    out = tmp_path / "analysis"
    rows = analyze(compose_analyze(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "num_images=4", "batch_size=4",
                                   "overlay_images=2", "exclude_border=true", out_dir=out))
    means = {r["map"]: r for r in rows if r["head"] == "mean"}
    assert len(means) == 14 and {r["kind"] for r in means.values()} == {"kernel", "grid"}
    kernel, grid = means["stages.0.blocks.0.kernel"], means["stages.0.blocks.0.grid"]
    assert (kernel["stage"], kernel["block"], kernel["keys"], kernel["mad_uniform"]) == ("0", "0", 9, pytest.approx(4 / 3))
    # Stage 0 at 32 px, g = 8: 4x4 tokens 8 pixels apart; interior queries only (the 2x2 centre).
    assert grid["keys"] == 16 and grid["mad_uniform"] == pytest.approx(8 * 2.0)
    assert len([r for r in rows if r["map"] == "stages.2.blocks.0.grid"]) == 6 + 1  # 6 heads and their mean
    overlays = {p.name for p in (out / "overlays").glob("*.png")}
    assert {"stages.0.blocks.0.kernel.png", "stages.0.blocks.0.grid.png"} <= overlays and len(overlays) == 14
