"""``python -m vitlab.analyze``: how far and how sharply a trained model attends.

    python -m vitlab.analyze ckpt_path=<run dir>/checkpoints/last.ckpt [data=<data>] [split=val] [num_images=64]

For every attention map a family's ``attention_maps(images)`` returns, per head: the **mean attention
distance** (MAD: the attention-weighted distance from each query to its keys, averaged over queries)
and the **normalised entropy** ``Hn = -sum(w ln w) / ln(K)`` over the K keys, each beside the value
uniform attention would give for the same queries (MAD_uniform, Hn = 1), as mean +- std over the
images of a split (a mean over queries and groups first, then over images). Heads are measured one
by one and only then averaged (the ``mean`` rows): averaging the maps first would make heads that
look in different places seem spread out.

Every map is a :class:`vitlab.layers.attention_maps.AttentionMap` that carries its layout and gives
its weights as rows over spatial keys with the query-key distances; nothing here reads a map's name
or rank, so a family with a new layout needs no change here. The layouts vitlab's networks return:

* **kernel** (OutGrid's dynamic kernels; softmax over the k x k taps): queries are the pixels, keys
  the taps; distance = Manhattan distance of the tap from the centre in feature-map pixels (uniform
  3x3: 4/3).
* **grid** (OutGrid's grid attention, tokens ``g`` pixels apart): distance = Manhattan distance
  between the tokens in feature-map pixels (token steps times ``g``), as in the OutGrid seed.
* **tokens** (Mini-ViT, the clear-vit ViTs, timm's DeiT): queries and keys are the patches (prefix
  rows and columns dropped, rows renormalised); distance = Euclidean distance in patches, as in the
  ViT paper. **Windowed tokens** (timm's Swin and MaxViT partitions): the same inside each window,
  averaged over the windows.

Not measured: maps marked ``measure=False`` (CLS-to-patch maps, used for overlays only; a
differential ``A1 - lambda A2`` map, whose two softmax maps are measured instead) and layouts
without spatial rows (QAViT's branches with bank keys). Queries on the 1-token border are left out
with ``exclude_border=true`` (the OutGrid seed's choice), in the uniform baseline too.

Writes ``mad_metrics.json`` and ``mad_metrics.csv`` (one row per map and head, plus its ``mean``
row) and ``overlays/*.png``: the kernel's centre-tap weight per pixel (locality), and for attention
maps the weights of one query (the CLS token, else the centre token) spread over the input.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vitlab.cli import check_group_choices, one_line_errors, print_help, print_resolved_config, run_entry_point
from vitlab.config import register_configs, to_hardware
from vitlab.errors import ConfigError
from vitlab.instantiate import build
from vitlab.runs import load_run, prepare_output_dir, write_json
from vitlab.viz import denormalise, overlay_figure, overlay_heatmaps

if TYPE_CHECKING:  # annotations only: the layers (timm, torchvision) load with the network
    from vitlab.layers.attention_maps import AttentionMap

register_configs()

CONF_DIR = Path(__file__).resolve().parent / "conf"
ANALYSIS_FILES = ["mad_metrics.json", "mad_metrics.csv", "overlays"]
_EPS = 1e-12


# ----------------------------------------------------------------------------- layouts
def locality(probs: torch.Tensor, dist: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``probs (..., Q, K)`` rows of attention weights, ``dist (Q, K)`` query-key distances, ``queries``
    a boolean mask of the Q rows to use. Returns MAD and Hn averaged over the kept queries, shape
    ``(...)``, and the uniform-attention MAD over the same queries."""
    p = probs.float()[..., queries, :]
    d = dist[queries].to(p.device)
    p = p.clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(_EPS)
    mad = (p * d).sum(-1).mean(-1)
    keys = p.shape[-1]
    entropy = -(p * p.clamp_min(_EPS).log()).sum(-1) / math.log(keys) if keys > 1 else torch.zeros_like(p[..., 0])
    return mad, entropy.mean(-1), d.mean().item()


def measure_map(name: str, m: AttentionMap, num_images: int, exclude_border: bool = False) -> dict[str, Any] | None:
    """Per-image, per-head MAD and Hn of one map: ``{"mad": (B, heads), "hn": (B, heads), "mad_uniform",
    "keys", "unit", "kind"}``; None for maps that are not measured (the map's ``measure`` and
    :meth:`~vitlab.layers.attention_maps.AttentionMap.locality_rows` decide)."""
    rows = m.locality_rows(num_images) if m.measure else None
    if rows is None:
        return None
    keep = ~rows.border if exclude_border else torch.ones_like(rows.border)
    mad, hn, uniform = locality(rows.probs, rows.dist, keep)  # (B, heads, G)
    return {"kind": rows.kind, "mad": mad.mean(-1), "hn": hn.mean(-1), "mad_uniform": uniform,
            "keys": rows.probs.shape[-1], "unit": rows.unit}


def where(name: str) -> tuple[str, str]:
    """(stage, block) read from a map's module name; empty where the name has none."""
    staged = re.search(r"(?:stages|layers)\.(\d+)\.(?:.*?blocks\.)?(\d+)?", name)
    if staged:
        return staged.group(1), staged.group(2) or ""
    front = re.search(r"front\.(\d+)", name)
    if front:
        return "front", front.group(1)
    block = re.search(r"blocks\.(\d+)", name)
    return ("", block.group(1)) if block else ("", "")


class LocalityStats:
    """Accumulates per-image MAD / Hn over batches and summarises them per map and head."""

    def __init__(self, exclude_border: bool = False) -> None:
        self.exclude_border = exclude_border
        self.per_map: dict[str, dict[str, Any]] = {}

    def update(self, maps: Mapping[str, AttentionMap], num_images: int) -> None:
        for name, m in maps.items():
            result = measure_map(name, m, num_images, self.exclude_border)
            if result is None:
                continue
            entry = self.per_map.setdefault(name, {**{k: v for k, v in result.items() if k not in ("mad", "hn")}, "mad": [], "hn": []})
            entry["mad"].append(result["mad"].detach().cpu())
            entry["hn"].append(result["hn"].detach().cpu())

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, entry in self.per_map.items():
            mad, hn = torch.cat(entry["mad"]), torch.cat(entry["hn"])  # (images, heads)
            stage, block = where(name)
            base = {"map": name, "kind": entry["kind"], "stage": stage, "block": block, "n_images": mad.shape[0],
                    "keys": entry["keys"], "unit": entry["unit"]}
            heads = [(str(h), mad[:, h], hn[:, h]) for h in range(mad.shape[1])] + [("mean", mad.mean(1), hn.mean(1))]
            for head, m, h in heads:
                rows.append({
                    **base,
                    "head": head,
                    "mad_mean": m.mean().item(),
                    "mad_std": m.std().item() if m.numel() > 1 else 0.0,
                    "mad_uniform": entry["mad_uniform"],
                    "mad_vs_uniform": m.mean().item() / entry["mad_uniform"] if entry["mad_uniform"] > 0 else None,
                    "hn_mean": h.mean().item(),
                    "hn_std": h.std().item() if h.numel() > 1 else 0.0,
                    "hn_uniform": 1.0,
                })
        return rows


def save_overlays(folder: Path, images: torch.Tensor, maps: Mapping[str, AttentionMap],
                  mean: Any = None, std: Any = None) -> list[Path]:
    """One PNG per map that can be overlaid, named after the map (the first ``len(images)`` images
    of the maps' batch); returns the files."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    shown = denormalise(images, mean, std)
    files = []
    for name, (heat, what) in overlay_heatmaps(maps).items():
        fig = overlay_figure(shown, heat[: shown.shape[0]], f"{name}: {what}")
        path = folder / f"{name.replace('/', '_')}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        files.append(path)
    return files


# ----------------------------------------------------------------------------- the task
def analyze(cfg: DictConfig) -> list[dict[str, Any]]:
    """Measure ``cfg.ckpt_path`` on ``cfg.num_images`` images of a split; returns the metric rows."""
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split: unknown split {cfg.split!r}; use val or test")
    if cfg.num_images < 1:
        raise ConfigError(f"num_images: must be >= 1, got {cfg.num_images}")
    model_node = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)) if cfg.get("model") else None
    run = load_run(cfg.ckpt_path, model_node)
    module = run.module
    if not module.has_attention_maps:
        raise ConfigError(f"ckpt_path: model {run.model_name} has no attention maps to analyse (a convolutional network?)")
    hardware = to_hardware(cfg.hardware)
    device = torch.device("cuda" if hardware.resolved_accelerator() == "gpu" else "cpu")
    module.to(device)
    out_dir = prepare_output_dir(Path(cfg.out_dir or cfg.paths.output_dir), ANALYSIS_FILES, cfg.overwrite)

    if cfg.get("data"):
        data_node = cfg.data
    elif run.config is not None:
        data_node = run.config.data
    else:
        raise ConfigError(f"data: no data config given and no config.yaml in {run.run_dir}; add data=<data config>")
    datamodule = build(data_node, batch_size=cfg.batch_size, num_workers=hardware.num_workers, pin_memory=hardware.pin_memory)
    datamodule.setup("validate" if cfg.split == "val" else "test")
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()
    if isinstance(loader, (list, tuple)):
        loader = loader[0]

    stats = LocalityStats(cfg.exclude_border)
    seen = 0
    with torch.no_grad():
        for images, _ in loader:
            images = images[: cfg.num_images - seen].to(device)
            maps = module.attention_maps(images)
            stats.update(maps, images.shape[0])
            if seen == 0 and cfg.overlay_images > 0:
                count = min(cfg.overlay_images, images.shape[0])
                save_overlays(out_dir / "overlays", images[:count], maps,
                              getattr(datamodule, "mean", None), getattr(datamodule, "std", None))
            seen += images.shape[0]
            if seen >= cfg.num_images:
                break
    rows = stats.rows()
    if not rows:
        raise ConfigError(f"ckpt_path: none of {run.model_name}'s attention maps has a layout vitlab.analyze reads (see its docstring)")
    write_metrics(out_dir, rows, {"ckpt_path": str(run.ckpt_path.resolve()), "model": run.model_name, "split": cfg.split,
                                  "n_images": seen, "exclude_border": bool(cfg.exclude_border)})
    print(format_table(rows))
    print(f"{seen} images of the {cfg.split} split; results in {out_dir}")
    return rows


def write_metrics(out_dir: Path, rows: list[dict[str, Any]], about: dict[str, Any]) -> None:
    write_json(out_dir / "mad_metrics.json", {**about, "rows": rows})
    with (out_dir / "mad_metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The ``mean`` rows as a markdown table: MAD and Hn with their uniform baselines."""
    lines = ["| map | kind | keys | MAD (uniform) | Hn (uniform 1) |", "|---|---|---|---|---|"]
    for r in rows:
        if r["head"] == "mean":
            lines.append(f"| {r['map']} | {r['kind']} | {r['keys']} | {r['mad_mean']:.3f} +- {r['mad_std']:.3f} ({r['mad_uniform']:.3f}) "
                         f"| {r['hn_mean']:.3f} +- {r['hn_std']:.3f} |")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analyze")
def _hydra_main(cfg: DictConfig) -> None:
    with one_line_errors():
        analyze(cfg)


def main() -> None:
    run_entry_point(
        _hydra_main,
        partial(print_help, conf_dir=CONF_DIR, config_name="analyze"),
        partial(print_resolved_config, conf_dir=CONF_DIR, config_name="analyze"),
        partial(check_group_choices, conf_dir=CONF_DIR),
    )


if __name__ == "__main__":
    main()
