"""``python -m vitlab.report <multirun dir>``: one table of a sweep's runs, and their learning curves.

    python -m vitlab.report multirun/2026-11-21/10-00-00
    python -m vitlab.report multirun/2026-11-21/10-00-00 --against seed     # the seeds' figures beside each row

Every run folder under the directory (one with ``.hydra/overrides.yaml``) that finished (has
``metrics.json``) becomes a row: a column per swept key (an override whose value differs between
runs), then test top-1 / top-5 (%), best val top-1, params, MACs per image (torch's FlopCounterMode,
FLOPs / 2), train and val images/s and epochs. ``--against seed`` adds the seed's published figure
for the same network and data (``vitlab/seed_results.yaml``) and the difference. Unfinished runs
are listed under the table. Writes ``report.md``, ``report.csv`` and ``convergence.png`` (val top-1
and val loss per epoch from each run's TensorBoard events) into ``<dir>/report`` (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

import yaml

from vitlab.cli import exit_with_error
from vitlab.errors import ConfigError, VitlabError

SEED_RESULTS = Path(__file__).resolve().parent / "seed_results.yaml"
REPORT_FILES = ["report.md", "report.csv", "convergence.png"]


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (with Hydra's ``.hydra/overrides.yaml``), in job-number order."""
    if not root.is_dir():
        raise ConfigError(f"multirun dir: {root.resolve()} is not a folder; give a folder under multirun/<date>/<time>")
    runs = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    return sorted(runs, key=_job_order)


def _job_order(path: Path) -> tuple:
    number = re.match(r"^(\d+)_", path.name) or re.match(r"^(\d+)$", path.name)
    return (int(number.group(1)) if number else 1 << 30, str(path))


def read_overrides(run: Path) -> dict[str, str]:
    items = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def swept_keys(overrides: list[dict[str, str]]) -> list[str]:
    """Keys whose value is not the same in every run, in first-seen order."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def load_seed_results(path: Path = SEED_RESULTS) -> dict[str, dict[str, dict[str, Any]]]:
    return yaml.safe_load(path.read_text())


def collect(root: Path, against: str | None = None) -> dict[str, Any]:
    """The table's rows and columns, and the runs left out."""
    runs = find_runs(root)
    finished = [r for r in runs if (r / "metrics.json").is_file()]
    unfinished = [r for r in runs if r not in finished]
    if not finished:
        what = f"{len(runs)} run folder(s), none with metrics.json" if runs else "no run folders (.hydra/overrides.yaml)"
        raise ConfigError(f"multirun dir: {root.resolve()} holds {what}; give the folder of a sweep whose runs have finished")
    overrides = [read_overrides(r) for r in finished]
    swept = swept_keys(overrides)
    seeds = load_seed_results() if against == "seed" else {}
    rows = []
    for run, run_overrides in zip(finished, overrides):
        metrics = json.loads((run / "metrics.json").read_text())
        job = re.match(r"^(\d+)_", run.name)  # Hydra's job number names the run; the rest repeats the overrides
        row: dict[str, Any] = {"run": job.group(1) if job else run.name, **{k: run_overrides.get(k, "") for k in swept}}
        row.update(
            {
                "top1": _pct(metrics.get("test/top1")),
                "top5": _pct(metrics.get("test/top5")),
                "val_top1_best": _pct(metrics.get("val/top1_best")),
                "params": metrics.get("params"),
                "macs": metrics.get("macs_per_image"),
                "train_img_s": _round(metrics.get("train/images_per_s"), 1),
                "val_img_s": _round(metrics.get("val/images_per_s"), 1),
                "epochs": metrics.get("epochs"),
                "model": metrics.get("model"),
                "data": metrics.get("data"),
                "path": str(run),
            }
        )
        if against == "seed":
            seed = (seeds.get(metrics.get("model")) or {}).get(metrics.get("data")) or {}
            seed_top1 = seed.get("top1")
            row.update(
                {
                    "seed_top1": seed_top1,
                    "delta_top1": None if seed_top1 is None or row["top1"] is None else round(row["top1"] - seed_top1, 2),
                    "seed_params": seed.get("params"),
                    "seed_macs": seed.get("macs"),
                    "seed_note": seed.get("note", "no published figure" if not seed else ""),
                }
            )
        rows.append(row)
    return {"rows": rows, "swept": swept, "runs": finished, "unfinished": unfinished, "labels": [_label(r, swept) for r in rows]}


def _label(row: dict[str, Any], swept: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in swept) or row["run"]


def _pct(value: Any) -> float | None:
    return None if value is None else round(100 * float(value), 2)


def _round(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _count(value: Any) -> str:
    if value in (None, ""):
        return "-"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


COLUMNS = [  # (key, header, formatter)
    ("top1", "top-1 (%)", lambda v: "-" if v is None else f"{v:.2f}"),
    ("top5", "top-5 (%)", lambda v: "-" if v is None else f"{v:.2f}"),
    ("val_top1_best", "best val top-1 (%)", lambda v: "-" if v is None else f"{v:.2f}"),
    ("params", "params", _count),
    ("macs", "MACs/image", _count),
    ("train_img_s", "train img/s", lambda v: "-" if v is None else f"{v:.1f}"),
    ("val_img_s", "val img/s", lambda v: "-" if v is None else f"{v:.1f}"),
    ("epochs", "epochs", lambda v: "-" if v is None else str(v)),
]
SEED_COLUMNS = [
    ("seed_top1", "seed top-1 (%)", lambda v: "-" if v is None else f"{v:.2f}"),
    ("delta_top1", "Δ top-1", lambda v: "-" if v is None else f"{v:+.2f}"),
    ("seed_params", "seed params", _count),
    ("seed_macs", "seed MACs", _count),
    ("seed_note", "seed figure", lambda v: v or ""),
]


def render_markdown(report: dict[str, Any], against: str | None) -> str:
    columns = COLUMNS + (SEED_COLUMNS if against == "seed" else [])
    headers = ["run", *report["swept"], "model", "data", *[h for _, h, _ in columns]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in report["rows"]:
        cells = [row["run"], *[str(row[k]) for k in report["swept"]], str(row["model"]), str(row["data"]),
                 *[fmt(row.get(k)) for k, _, fmt in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MACs are multiply-accumulates per image counted by torch's FlopCounterMode (FLOPs / 2); top-1/top-5 are",
              "the test split's, of the best checkpoint by val top-1."]
    if report["unfinished"]:
        lines += ["", f"Unfinished (no metrics.json): {', '.join(r.name for r in report['unfinished'])}"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, report: dict[str, Any], against: str | None) -> None:
    keys = ["run", *report["swept"], "model", "data", *[k for k, _, _ in COLUMNS], "path"]
    if against == "seed":
        keys += [k for k, _, _ in SEED_COLUMNS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["rows"])


def read_curves(run: Path) -> dict[str, list[tuple[float, float]]]:
    """``{"val/top1": [(epoch, value)], "val/loss": [...]}`` from the run's TensorBoard events; the epoch
    is the ``epoch`` scalar Lightning logs at the same step (1-based), else the position."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run / "tensorboard"
    if not folder.is_dir():
        return {}
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    epoch_at = {e.step: e.value for e in acc.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in ("val/top1", "val/loss"):
        if tag in tags:
            points = acc.Scalars(tag)
            curves[tag] = [(epoch_at[e.step] + 1 if e.step in epoch_at else i + 1, e.value) for i, e in enumerate(points)]
    return curves


def plot_convergence(path: Path, report: dict[str, Any]) -> int:
    """One PNG, val top-1 and val loss per epoch, one line per run; returns the number of runs drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_top1, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = 0
    for run, label in zip(report["runs"], report["labels"]):
        curves = read_curves(run)
        if not curves:
            continue
        drawn += 1
        for ax, tag, scale in ((ax_top1, "val/top1", 100), (ax_loss, "val/loss", 1)):
            if tag in curves:
                epochs, values = zip(*curves[tag])
                ax.plot(epochs, [scale * v for v in values], marker="o", markersize=3, label=label)
    ax_top1.set_ylabel("val top-1 (%)")
    ax_loss.set_ylabel("val loss (plain CE)")
    for ax in (ax_top1, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if drawn:
        ax_top1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def report(root: Path, against: str | None = None, out: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    if against not in (None, "seed"):
        raise ConfigError(f"--against: unknown reference {against!r}; use --against seed")
    table = collect(root, against)
    from vitlab.runs import prepare_output_dir  # late: it imports torch, which the error paths above do not need

    out_dir = out or root / "report"
    # Only folders with .hydra/overrides.yaml are runs, so a report folder inside the sweep is never one.
    prepare_output_dir(out_dir, REPORT_FILES, overwrite)
    markdown = render_markdown(table, against)
    (out_dir / "report.md").write_text(markdown)
    write_csv(out_dir / "report.csv", table, against)
    table["curves_drawn"] = plot_convergence(out_dir / "convergence.png", table)
    table["out_dir"] = out_dir
    print(markdown, end="")
    print(f"{len(table['rows'])} finished run(s); report in {out_dir}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitlab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a sweep's folder, e.g. multirun/<date>/<time>")
    parser.add_argument("--against", choices=["seed"], help="put the seed's published figure beside each row")
    parser.add_argument("--out", type=Path, help="where to write report.md/.csv and convergence.png (default <dir>/report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in that folder")
    args = parser.parse_args(argv)
    try:
        report(args.multirun_dir, args.against, args.out, args.overwrite)
    except VitlabError as err:
        exit_with_error(err)


if __name__ == "__main__":
    main()
