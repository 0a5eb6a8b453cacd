"""``python -m vitlab.report <multirun dir>``: a sweep's ablation table, runs over seeds averaged.

    python -m vitlab.report multirun/2026-11-21/10-00-00
    python -m vitlab.report multirun/2026-11-21/10-00-00 --baseline model=vit      # differences against vit
    python -m vitlab.report multirun/2026-11-21/10-00-00 --against seed            # the seeds' figures beside each row
    python -m vitlab.report multirun/2026-11-21/10-00-00 --over seed,data.split_seed

Every run folder under the directory (one with ``.hydra/overrides.yaml``) is read. The runs whose
overrides differ only in the replicate keys (``--over``, by default ``seed``) form one group, one
row: mean ± sample standard deviation and n of test top-1 / top-5 (%), best val top-1, test loss and
train / val images/s, with params, MACs per image, the number of test images each score is over,
and epochs. For every group but the baseline (``--baseline key=value ...``, else the first group)
the row gives the difference of mean test top-1 in points and its 95 % confidence interval: a
paired t interval on the per-seed differences when both groups ran the same seeds, Welch's interval
otherwise; the row says which, and ``*`` marks an interval that excludes 0. A group of one run shows
no spread and no interval. ``--against seed`` adds the seed's published figure for the same network
and data (``vitlab/seed_results.yaml``) and whether it lies within the group's mean ± one standard
deviation.

Runs without ``metrics.json`` (running, stopped or failed), with an unreadable one, without a
finite test top-1 or stopped before their last epoch are listed under the table, never averaged.
Writes ``report.md``, ``report.csv`` (one row per group), ``runs.csv`` (one row per run, with why a
run was left out) and ``convergence.png`` (per group, the mean val top-1 and val loss per epoch
with a band of ± one standard deviation, from the runs' TensorBoard events) into ``<dir>/report``
(``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from vitlab.cli import exit_with_error
from vitlab.errors import ConfigError, VitlabError
from vitlab.run_metrics import Averaged, RunMetrics, averaged_columns

SEED_RESULTS = Path(__file__).resolve().parent / "seed_results.yaml"
REPORT_FILES = ["report.md", "report.csv", "runs.csv", "convergence.png"]
CONFIDENCE = 0.95



@dataclass
class Run:
    path: Path
    name: str  # Hydra's job number, else the folder name
    overrides: dict[str, str]
    replicate: tuple[str, ...]  # the values of the --over keys (the seed)
    metrics: RunMetrics | None = None
    problem: str | None = None  # why the run is left out of the averages


@dataclass
class Group:
    settings: dict[str, str]  # the overrides the runs share (all but the --over keys)
    runs: list[Run] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)


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


def _saved_config(run: Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` (written by vitlab.train), else Hydra's copy; {} if neither reads."""
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
    return {}


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_run(path: Path, over: list[str]) -> Run:
    """One run folder: its overrides, its replicate (the ``over`` keys' values, from the overrides or
    else the saved config) and its metrics, or why it cannot be averaged (a debug run, one that
    metrics.json marks ``debug``, is never averaged)."""
    overrides = read_overrides(path)
    config = _saved_config(path)
    replicate = tuple(overrides[k] if k in overrides else _text(_dotted(config, k)) for k in over)
    job = re.match(r"^(\d+)_", path.name)  # Hydra's job number names the run; the rest repeats the overrides
    shared = {k: v for k, v in overrides.items() if k not in over}
    run = Run(path, job.group(1) if job else path.name, shared, replicate)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        run.problem = "no metrics.json (still running, stopped or failed)"
        return run
    try:
        values = json.loads(metrics_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        run.problem = f"metrics.json unreadable ({err.__class__.__name__})"
        return run
    try:
        run.metrics = RunMetrics.from_json(values)
    except ValueError as err:
        run.problem = f"metrics.json {err}"
        return run
    top1 = run.metrics.test_top1
    if run.metrics.debug:
        run.problem = f"a debug run ({run.metrics.debug})"
    elif top1 is None:
        run.problem = "no test/top1 in metrics.json (test=false?)"
    elif not _finite(top1):
        run.problem = f"test/top1 is {top1} (diverged)"
    else:
        # A run that ended before its last epoch was stopped (time limit, SIGTERM), unless it had
        # early stopping or a step limit, which end runs early by design.
        max_epochs, max_steps = _dotted(config, "trainer.max_epochs"), _dotted(config, "trainer.max_steps")
        epochs, early_stopping = run.metrics.get("epochs"), _dotted(config, "callbacks.early_stopping")
        by_design = early_stopping or max_steps not in (None, -1)
        if isinstance(max_epochs, int) and isinstance(epochs, int) and epochs < max_epochs and not by_design:
            run.problem = f"stopped after epoch {epochs} of {max_epochs}"
    return run


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1) and n; no spread (None) for fewer than 2 values."""
    n = len(values)
    return {
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n >= 2 else None,
        "n": n,
    }


def difference_interval(group: list[float], baseline: list[float], paired: bool) -> dict[str, Any]:
    """Mean of ``group`` minus mean of ``baseline`` with its two-sided 95 % t interval.

    ``paired``: the lists are aligned replicate by replicate and the interval is the one-sample t
    interval of the differences (n - 1 degrees of freedom). Otherwise Welch's interval: unequal
    variances, Welch-Satterthwaite degrees of freedom. Fewer than 2 values on a side: no interval.
    """
    from scipy import stats  # late: only a report with differences needs it

    result: dict[str, Any] = {"delta": statistics.fmean(group) - statistics.fmean(baseline), "low": None, "high": None,
                              "method": "paired" if paired else "Welch", "df": None}
    if paired:
        diffs = [g - b for g, b in zip(group, baseline)]
        if len(diffs) < 2:
            return result
        df = len(diffs) - 1
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    else:
        if len(group) < 2 or len(baseline) < 2:
            return result
        var_g, var_b = statistics.variance(group) / len(group), statistics.variance(baseline) / len(baseline)
        se = math.sqrt(var_g + var_b)
        df = float("inf")  # no spread on either side: a zero-width interval, whatever the df
        if se > 0:
            df = (var_g + var_b) ** 2 / (var_g**2 / (len(group) - 1) + var_b**2 / (len(baseline) - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se if se > 0 else 0.0
    result.update(low=result["delta"] - half, high=result["delta"] + half, df=df)
    return result


def parse_baseline(items: list[str] | None) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--baseline: {item!r} is not key=value; write e.g. --baseline model=vit")
        pairs[key.lstrip("+~")] = value
    return pairs


def collect(
    root: Path, against: str | None = None, baseline: list[str] | None = None, over: list[str] | None = None,
    metrics: list[str] | None = None,
) -> dict[str, Any]:
    """The groups (one table row each), their columns, and the runs left out. ``metrics``: metrics.json
    keys averaged in columns of their own besides the record's (:func:`vitlab.run_metrics.averaged_columns`)."""
    over = over or ["seed"]
    averaged_keys = averaged_columns(metrics or [])
    paths = find_runs(root)
    runs = [read_run(p, over) for p in paths]
    averaged = [r for r in runs if r.problem is None]
    if not averaged:
        if not runs:
            what = "no run folders (.hydra/overrides.yaml)"
        elif not any((r.path / "metrics.json").is_file() for r in runs):
            what = f"{len(runs)} run folder(s), none with metrics.json"
        else:
            first = runs[0]
            what = f"{len(runs)} run folder(s), none with a usable metrics.json (first: {first.name}: {first.problem})"
        raise ConfigError(
            f"multirun dir: {root.resolve()} holds {what}; give the folder of a sweep whose runs have finished"
        )

    groups: dict[tuple, Group] = {}
    for run in averaged:
        key = tuple(sorted(run.overrides.items()))
        groups.setdefault(key, Group(dict(run.overrides))).runs.append(run)
    ordered = list(groups.values())
    label_keys = swept_keys([g.settings for g in ordered])
    base = _choose_baseline(ordered, parse_baseline(baseline), label_keys)
    seeds = load_seed_results() if against == "seed" else {}

    for group in ordered:
        for metric, column in averaged_keys:
            values = [column.scale * float(r.metrics.get(metric)) for r in group.runs if _finite(r.metrics.get(metric))]
            group.stats[column.name] = summarize(values)
        group.row = _group_row(group, label_keys, over)
    for group in ordered:
        group.row.update(_difference_columns(group, base))
        if against == "seed":
            group.row.update(_seed_columns(group, seeds))

    shown = _identity_columns(ordered, label_keys)
    return {
        "groups": ordered,
        "averaged": averaged_keys,
        "rows": [g.row for g in ordered],
        "label_keys": label_keys,
        "identity": shown,
        "over": over,
        "baseline": base,
        "runs": averaged,
        "left_out": [r for r in runs if r.problem is not None],
        "all_runs": runs,
        "labels": [_label(g, label_keys) for g in ordered],
    }


def _choose_baseline(groups: list[Group], wanted: dict[str, str], label_keys: list[str]) -> Group:
    if not wanted:
        return groups[0]
    matches = [g for g in groups if all(g.settings.get(k) == v for k, v in wanted.items())]
    if len(matches) == 1:
        return matches[0]
    asked = " ".join(f"{k}={v}" for k, v in wanted.items())
    def listed(some: list[Group]) -> str:
        return "; ".join(_label(g, label_keys).replace(", ", " ") for g in some)

    if not matches:
        raise ConfigError(f"--baseline: no group of runs has {asked}; the groups are: {listed(groups)}")
    raise ConfigError(f"--baseline: {asked} matches {len(matches)} groups; add keys to pick one of: {listed(matches)}")


def replicate_column(over: list[str]) -> str:
    """The column naming each group's replicates: ``seeds`` for ``--over seed``."""
    return over[0] + "s" if len(over) == 1 else "replicates"


def _label(group: Group, label_keys: list[str]) -> str:
    return ", ".join(f"{k}={group.settings.get(k, '')}" for k in label_keys) or "all runs"


def _distinct(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _group_row(group: Group, label_keys: list[str], over: list[str]) -> dict[str, Any]:
    metrics = [r.metrics for r in group.runs]
    images = _distinct([m.get("test/images") for m in metrics])
    row: dict[str, Any] = {
        "group": _label(group, label_keys),
        "network": ",".join(map(str, _distinct([m.get("model") for m in metrics]))),
        "data": ",".join(map(str, _distinct([m.get("data") for m in metrics]))),
        "n": len(group.runs),
        replicate_column(over): ",".join("/".join(r.replicate) for r in group.runs),
        "runs": ",".join(r.name for r in group.runs),
    }
    row.update({k: group.settings.get(k, "") for k in label_keys})  # a swept `data=...` names its column
    for key, stat in group.stats.items():
        row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_n"] = stat["mean"], stat["std"], stat["n"]
    row["test_images"] = f"{min(images)}-{max(images)}" if len(images) > 1 else (images[0] if images else None)
    partial = [m.test_partial for m in metrics if m.test_partial is not None]
    row["test_partial"] = any(partial) if partial else None
    for key, metric in (("params", "params"), ("macs", "macs_per_image"), ("macs_no_sdpa", "macs_per_image_without_sdpa"),
                        ("epochs", "epochs"), ("protocol", "protocol")):
        values = _distinct([m.get(metric) for m in metrics])
        row[key] = values[0] if len(values) == 1 else (f"{min(values)}-{max(values)}" if values else None)
    return row


def _difference_columns(group: Group, base: Group) -> dict[str, Any]:
    if group is base:
        return {"delta_top1": None, "ci_low": None, "ci_high": None, "ci_method": "baseline", "ci_excludes_0": None}
    mine = {r.replicate: float(r.metrics.test_top1) * 100 for r in group.runs}
    theirs = {r.replicate: float(r.metrics.test_top1) * 100 for r in base.runs}
    # Paired only when both groups ran the same replicates, each once.
    paired = mine.keys() == theirs.keys() and len(mine) == len(group.runs) and len(theirs) == len(base.runs)
    order = [r.replicate for r in base.runs]
    if paired:
        interval = difference_interval([mine[k] for k in order], [theirs[k] for k in order], paired=True)
    else:
        interval = difference_interval([100 * float(r.metrics.test_top1) for r in group.runs],
                                       [100 * float(r.metrics.test_top1) for r in base.runs], paired=False)
    if interval["low"] is None:  # fewer than 2 runs on a side: a difference, but no interval and no method
        return {"delta_top1": interval["delta"], "ci_low": None, "ci_high": None, "ci_method": None,
                "ci_excludes_0": None}
    return {"delta_top1": interval["delta"], "ci_low": interval["low"], "ci_high": interval["high"],
            "ci_method": interval["method"], "ci_excludes_0": bool(interval["low"] > 0 or interval["high"] < 0)}


def _seed_columns(group: Group, seeds: dict[str, Any]) -> dict[str, Any]:
    first = group.runs[0].metrics
    seed = (seeds.get(first.get("model")) or {}).get(first.get("data")) or {}
    seed_top1 = seed.get("top1")
    stat = group.stats["top1"]
    inside = None
    if seed_top1 is not None and stat["std"] is not None:
        inside = abs(seed_top1 - stat["mean"]) <= stat["std"]
    return {
        "seed_top1": seed_top1,
        "seed_delta": None if seed_top1 is None else stat["mean"] - seed_top1,
        "seed_inside": inside,
        "seed_params": seed.get("params"),
        "seed_macs": seed.get("macs"),
        "seed_note": seed.get("note", "no published figure" if not seed else ""),
    }


def _identity_columns(groups: list[Group], label_keys: list[str]) -> list[tuple[str, str]]:
    """The network and data columns, where they add something: ``model`` is shown unless it is a
    swept key already (then ``network`` only where the registry name differs from the config name),
    ``data`` unless it is swept."""
    shown = []
    if "model" not in label_keys:
        shown.append(("network", "model"))
    elif any(g.row["network"] != g.settings.get("model") for g in groups):
        shown.append(("network", "network"))
    if "data" not in label_keys:
        shown.append(("data", "data"))
    return shown


def _count(value: Any) -> str:
    if value in (None, ""):
        return "-"
    if isinstance(value, str):
        return value
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _spread(row: dict[str, Any], key: str, digits: int) -> str:
    """``mean ± std``; the mean alone for one value; ``(k of n)`` when some runs lack the figure."""
    mean, std, n = row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_n"]
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if n == row["n"] else f"{text} ({n} of {row['n']})"


def _images(row: dict[str, Any]) -> str:
    if row["test_images"] is None:
        return "-"
    text = f"{row['test_images']:,}" if isinstance(row["test_images"], int) else str(row["test_images"])
    return text + (" (partial)" if row["test_partial"] else "")


def _delta(row: dict[str, Any]) -> str:
    return "baseline" if row["ci_method"] == "baseline" else f"{row['delta_top1']:+.2f}"


def _interval(row: dict[str, Any]) -> str:
    if row["ci_method"] == "baseline":
        return ""
    if row["ci_low"] is None:
        return "- (n < 2)"
    mark = " *" if row["ci_excludes_0"] else ""
    return f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] {row['ci_method']}{mark}"


def _plain(digits: int):
    return lambda v: "-" if v is None else (v if isinstance(v, str) else f"{v:.{digits}f}")


def table_columns(averaged: list[tuple[str, Averaged]]) -> list[tuple[str, Any]]:
    """(header, cell from the row) of the table: test top-1 and its difference from the baseline,
    the other averaged figures, then what the runs of a group share."""
    spread = [(column.header, partial(_spread, key=column.name, digits=column.digits)) for _, column in averaged]
    return [
        spread[0],
        ("Δ top-1", _delta),
        ("95 % CI of Δ", _interval),
        *spread[1:],
        ("test images", _images),
        ("params", lambda r: _count(r["params"])),
        ("MACs/image", lambda r: _count(r["macs"])),
        ("epochs", lambda r: "-" if r["epochs"] is None else str(r["epochs"])),
    ]


SEED_COLUMNS = [
    # heldout: the best val checkpoint tested once; seed: the original's own protocol (docs/seeds/README.md).
    ("protocol", lambda r: r.get("protocol") or "heldout"),
    ("seed top-1 (%)", lambda r: _plain(2)(r["seed_top1"])),
    ("mean - seed", lambda r: "-" if r["seed_delta"] is None else f"{r['seed_delta']:+.2f}"),
    ("seed within mean ± std", lambda r: "-" if r["seed_inside"] is None else ("yes" if r["seed_inside"] else "no")),
    ("seed params", lambda r: _count(r["seed_params"])),
    # The originals counted with fvcore, which leaves SDPA out: that count stands beside theirs.
    ("MACs/image without SDPA", lambda r: _count(r.get("macs_no_sdpa"))),
    ("seed MACs", lambda r: _count(r["seed_macs"])),
    ("seed figure", lambda r: r["seed_note"] or ""),
]


def render_markdown(report: dict[str, Any], against: str | None) -> str:
    columns = table_columns(report["averaged"]) + (SEED_COLUMNS if against == "seed" else [])
    ident = report["identity"]
    first = report["label_keys"] or ["group"]
    replicates = replicate_column(report["over"])
    headers = [*first, *[h for _, h in ident], "n", replicates, *[h for h, _ in columns]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in report["rows"]:
        cells = [*[str(row[k]) for k in first], *[str(row[k]) for k, _ in ident], str(row["n"]), row[replicates] or "-",
                 *[cell(row) for _, cell in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    base = report["baseline"].row["group"]
    over = ", ".join(report["over"])
    lines += [
        "",
        f"One row per group of runs that differ only in {over}: mean ± sample standard deviation over the n runs",
        "(a group of one run shows its value alone, and no interval). top-1/top-5 are the test split's, of each run's",
        "best checkpoint by val top-1; `test images` is how many test images each score is over ((partial): fewer",
        "than the whole split; -: not recorded by older runs). MACs are multiply-accumulates per image (FLOPs / 2).",
        f"Baseline: {base}. Δ top-1: a group's mean test top-1 minus the baseline's, in points. Its 95 % CI is",
        f"a paired t interval on the per-{report['over'][0]} differences where both groups ran the same {over}",
        "values, Welch's interval otherwise (the cell says which); * marks an interval that excludes 0.",
    ]
    if against == "seed":
        lines += ["The seed's published figure is a single run; `seed within mean ± std` says whether it lies",
                  "within one standard deviation of the group's mean (no answer for a group of one run)."]
    if report.get("curves_drawn"):  # convergence.png beside report.md holds at least one group's curves
        lines += ["", "![val top-1 and val loss per epoch: each group's mean over its runs, ± 1 std](convergence.png)"]
    if report["left_out"]:
        lines += ["", "Runs left out of the averages:", ""]
        lines += [f"- {r.name} ({_settings_text(r, report['over'])}): {r.problem}" for r in report["left_out"]]
    return "\n".join(lines) + "\n"


def _settings_text(run: Run, over: list[str]) -> str:
    """The run's overrides and replicate, e.g. ``model=vit seed=1``."""
    items = [*run.overrides.items(), *((k, v) for k, v in zip(over, run.replicate) if v != "")]
    return " ".join(f"{k}={v}" for k, v in items) or run.path.name


def write_csv(path: Path, report: dict[str, Any], against: str | None) -> None:
    """One row per group, numbers unrounded."""
    keys = [*report["label_keys"], "group", "network", "data", "n", replicate_column(report["over"]), "runs"]
    keys += [f"{column.name}_{part}" for _, column in report["averaged"] for part in ("mean", "std", "n")]
    keys += ["delta_top1", "ci_low", "ci_high", "ci_method", "ci_excludes_0", "test_images", "test_partial",
             "params", "macs", "macs_no_sdpa", "epochs"]
    if against == "seed":
        keys += ["protocol", "seed_top1", "seed_delta", "seed_inside", "seed_params", "seed_macs", "seed_note"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(keys)), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["rows"])


def write_runs_csv(path: Path, report: dict[str, Any]) -> None:
    """One row per run folder, the left-out ones with their reason."""
    override_keys = list(dict.fromkeys(k for r in report["all_runs"] for k in r.overrides))
    keys = ["run", *override_keys, *report["over"], "status", *[metric for metric, _ in report["averaged"]],
            "test/images", "test/partial", "path"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(keys)), extrasaction="ignore")
        writer.writeheader()
        for run in report["all_runs"]:
            metrics = run.metrics.to_json() if run.metrics else {}
            writer.writerow({"run": run.name, **run.overrides, **dict(zip(report["over"], run.replicate)),
                             "status": run.problem or "averaged", **metrics, "path": str(run.path)})


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
            curves[tag] = [(epoch_at[e.step] + 1 if e.step in epoch_at else i + 1, e.value)
                           for i, e in enumerate(points)]
    return curves


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float, float | None, int]]:
    """Per epoch over the runs that reached it: (epoch, mean, sample std or None for one run, n)."""
    by_epoch: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, value in dict(curve).items():  # a resumed run may log an epoch twice: keep the last
            by_epoch.setdefault(epoch, []).append(value)
    return [(e, s["mean"], s["std"], s["n"]) for e, s in ((e, summarize(v)) for e, v in sorted(by_epoch.items()))]


def plot_convergence(path: Path, report: dict[str, Any]) -> int:
    """One PNG, val top-1 and val loss per epoch: per group the mean over its runs and a band of ± one
    standard deviation (where at least 2 runs reached the epoch); returns the number of groups drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_top1, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = 0
    report["curves"] = {}
    for group, label in zip(report["groups"], report["labels"]):
        per_run = [read_curves(r.path) for r in group.runs]
        per_run = [c for c in per_run if c]
        if not per_run:
            continue
        drawn += 1
        color = f"C{(drawn - 1) % 10}"
        report["curves"][label] = {}
        for ax, tag, scale in ((ax_top1, "val/top1", 100), (ax_loss, "val/loss", 1)):
            points = mean_curve([c[tag] for c in per_run if tag in c])
            report["curves"][label][tag] = points
            if not points:
                continue
            epochs = [p[0] for p in points]
            ax.plot(epochs, [scale * p[1] for p in points], marker="o", markersize=3, color=color,
                    label=f"{label} (n={len(per_run)})")
            band = [(p[0], scale * (p[1] - p[2]), scale * (p[1] + p[2])) for p in points if p[2] is not None]
            if band:
                band_epochs, lows, highs = zip(*band)
                ax.fill_between(band_epochs, lows, highs, color=color, alpha=0.2, linewidth=0)
    ax_top1.set_ylabel("val top-1 (%), mean ± 1 std")
    ax_loss.set_ylabel("val loss (plain CE), mean ± 1 std")
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


def report(root: Path, against: str | None = None, out: Path | None = None, overwrite: bool = False,
           baseline: list[str] | None = None, over: list[str] | None = None,
           metrics: list[str] | None = None) -> dict[str, Any]:
    if against not in (None, "seed"):
        raise ConfigError(f"--against: unknown reference {against!r}; use --against seed")
    table = collect(root, against, baseline, over, metrics)
    # Only folders with .hydra/overrides.yaml are runs, so a report folder inside the sweep is never one.
    from vitlab.runs import prepare_output_dir  # late: it imports torch, which the table does not need

    out_dir = prepare_output_dir(
        out or root / "report", REPORT_FILES, overwrite, key="--out", how="give another --out <folder> or add --overwrite"
    )
    table["curves_drawn"] = plot_convergence(out_dir / "convergence.png", table)  # first: report.md links it
    markdown = render_markdown(table, against)
    (out_dir / "report.md").write_text(markdown)
    write_csv(out_dir / "report.csv", table, against)
    write_runs_csv(out_dir / "runs.csv", table)
    table["out_dir"] = out_dir
    print(markdown, end="")
    print(f"{len(table['runs'])} run(s) averaged in {len(table['groups'])} group(s), "
          f"{len(table['left_out'])} left out; report in {out_dir}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitlab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a sweep's folder, e.g. multirun/<date>/<time>")
    parser.add_argument("--over", default="seed",
                        help="comma-separated keys whose runs are averaged together (default: seed)")
    parser.add_argument("--baseline", nargs="+", metavar="KEY=VALUE",
                        help="the group the others are compared with (default: the first)")
    parser.add_argument("--against", choices=["seed"], help="put the seed's published figure beside each row")
    parser.add_argument("--out", type=Path, help="where to write the report files (default <dir>/report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in that folder")
    parser.add_argument("--metric", action="append", default=[], metavar="KEY",
                        help="a numeric metrics.json key to average in a column of its own (repeatable), "
                             "e.g. one a callback of yours records")
    args = parser.parse_args(argv)
    try:
        over = [k.strip().lstrip("+~") for k in args.over.split(",") if k.strip()]
        if not over:
            raise ConfigError("--over: no key given; write e.g. --over seed or --over seed,data.split_seed")
        report(args.multirun_dir, args.against, args.out, args.overwrite, args.baseline, over, args.metric)
    except VitlabError as err:
        exit_with_error(err)


if __name__ == "__main__":
    main()
