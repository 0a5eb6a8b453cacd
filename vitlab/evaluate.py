"""``python -m vitlab.evaluate``: score a checkpoint on any data config.

    python -m vitlab.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt             # the run's test split
    python -m vitlab.evaluate ckpt_path=... data=cifar100 hardware=gpu
    python -m vitlab.evaluate ckpt_path=... data=tinyimagenet_c [reference=<other eval>/robustness.json]

The model is rebuilt from the run's ``config.yaml`` and the weights load with ``weights_only=True``
(:mod:`vitlab.runs`). Every set is scored for loss (plain and with the run's label smoothing), top-1
and top-5, over ``images`` images (``partial: true`` when ``limit_batches`` stopped before the end
of the set; the loaders' fixed class-interleaved order makes such a prefix class-balanced), and
timed with :mod:`vitlab.measure`: ``warmup_iters`` untimed forward passes first, the device
synchronised around every timed forward, ms per batch = mean over all batches, images/s = the real
number of images (the last batch counts with its own size) over the summed forward time. Data
loading is not timed. The network's MACs per image at the data's size (with and without SDPA, see
:func:`vitlab.measure.count_flops`) are recorded too.

Written to the evaluation's folder: ``eval_metrics.json`` (every set); for data whose test sets are
named ``<corruption>/<severity>`` (TinyImageNet-C, or any DataModule with such ``names``) also
``robustness.{csv,json,md}`` (corruption x severity top-1, clean top-1, mean corrupted top-1, mCE and
relative mCE against a ``reference`` evaluation) and ``robustness_per_corruption.png`` /
``robustness_per_severity.png``.

With ``pictures: true`` (the default) the scored split (the set ``all``; on corruption data the
clean set that ``clean=run`` scores, none with ``clean=null``) also gets ``confusion_matrix.csv``
(counts, rows = true class, columns = predicted), ``confusion_matrix.png`` (each row normalised),
``per_class.csv`` (images, top-1 and top-5 per class) and ``predictions.png`` (the first
``picture_images`` images of the fixed eval order, predicted and true class, wrong ones in red), all
gathered inside the one scoring pass.

With ``probe=linear`` a linear probe is fitted on each block's frozen features (:mod:`vitlab.probe`)
and its top-1 on the scored split is printed, recorded under ``probe`` and written to ``probe.csv``.
"""

from __future__ import annotations

import csv
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from vitlab.cli import check_group_choices, one_line_errors, print_help, print_resolved_config, run_entry_point
from vitlab.config import register_configs, to_hardware
from vitlab.errors import ConfigError, VitlabError
from vitlab.inference import inference_network
from vitlab.measure import Stopwatch, human, image_flops, resolve_precision
from vitlab.runs import load_run, prepare_output_dir, write_json
from vitlab.utils import reuse_freed_memory

register_configs()

CONF_DIR = Path(__file__).resolve().parent / "conf"
ROBUSTNESS_FILES = ["robustness.csv", "robustness.json", "robustness.md", "robustness_per_corruption.png", "robustness_per_severity.png"]
PICTURE_FILES = ["confusion_matrix.csv", "confusion_matrix.png", "per_class.csv", "predictions.png"]
PROBE_FILE = "probe.csv"
_CORRUPTION_SET = re.compile(r"^(?P<corruption>[^/]+)/(?P<severity>\d+)$")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.data`` (or the run's data); returns what ``eval_metrics.json`` holds."""
    from vitlab.instantiate import build

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split: unknown split {cfg.split!r}; use test or val")
    limit = cfg.limit_batches
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit_batches: expected a number of batches >= 1 (or null for every batch), got {limit!r}")
    if cfg.probe not in (None, "linear"):
        raise ConfigError(f"probe: unknown probe {cfg.probe!r}; use linear (or null for none)")
    model_node = cfg.model if cfg.get("model") else None
    if model_node is not None:
        model_node = OmegaConf.create(OmegaConf.to_container(model_node, resolve=True))
    run = load_run(cfg.ckpt_path, model_node)
    hardware = to_hardware(cfg.hardware)
    if hardware.reuse_freed_memory:
        reuse_freed_memory()
    device = torch.device("cuda" if hardware.resolved_accelerator() == "gpu" else "cpu")
    module = run.module.to(device)
    loader_args = {"batch_size": cfg.batch_size, "num_workers": hardware.num_workers, "pin_memory": hardware.pin_memory}
    data_node = cfg.data if cfg.get("data") else _run_data(run)
    datamodule = build(data_node, **loader_args)
    check_classes_match(module, datamodule, run.model_name)
    out_dir = prepare_output_dir(Path(cfg.out_dir or cfg.paths.output_dir),
                                 ["eval_metrics.json", *ROBUSTNESS_FILES, *PICTURE_FILES, PROBE_FILE], cfg.overwrite)
    img_size = getattr(datamodule, "img_size", None)
    flops = image_flops(getattr(module, "net", module), img_size) if img_size else None  # before any dtype cast
    scorer = Scorer(module, device, hardware.precision, module.recipe.label_smoothing, cfg.warmup_iters, cfg.limit_batches,
                    inference=hardware.inference)
    print(f"evaluating {run.model_name} from {run.ckpt_path} on {device} ({hardware.precision}, {hardware.inference}); "
          f"results in {out_dir}")
    if flops is not None:
        print(f"{human(flops.macs)} MACs per {img_size}x{img_size} image ({human(flops.macs_without_sdpa)} without SDPA, as fvcore counts)")

    title = f"{run.model_name} on {_data_name(data_node)} ({cfg.split} split)"
    pictures = Pictures(out_dir, cfg.picture_images, title) if cfg.pictures else None
    sets = _score_datamodule(datamodule, cfg.split, scorer, pictures)
    result: dict[str, Any] = {
        "ckpt_path": str(run.ckpt_path.resolve()),
        "model": run.model_name,
        "data": _data_name(data_node),
        "split": cfg.split,
        "device": str(device),
        "precision": hardware.precision,
        "inference": hardware.inference,
        "batch_size": cfg.batch_size,
        "warmup_iters": cfg.warmup_iters,
        **(flops.as_record() if flops is not None else {}),
        "sets": sets,
    }
    table = corruption_table(sets)
    if table:
        clean = None
        if cfg.clean == "run":
            clean_dm = build(_run_data(run), **loader_args)
            clean = _score_datamodule(clean_dm, cfg.split, scorer, pictures)["all"]
            result["clean"] = clean
        elif cfg.clean not in (None, "null", "none"):
            raise ConfigError(f"clean: unknown value {cfg.clean!r}; use run (score the run's own data) or null")
        reference = read_reference(cfg.reference) if cfg.reference else None
        summary = robustness_summary(table, clean["top1"] if clean else None, reference)
        result["robustness"] = summary
        write_robustness(out_dir, summary, run.model_name)
        print(
            f"clean top-1 {_pct(summary['clean_top1'])} | mean corrupted top-1 {_pct(summary['mean_corrupted_top1'])}"
            + (f" | mCE {_num(summary['mce'])} | relative mCE {_num(summary['relative_mce'])}" if reference else "")
        )
    elif cfg.reference:
        raise ConfigError("reference: only used with corruption data (sets named <corruption>/<severity>), e.g. data=tinyimagenet_c")
    if cfg.probe:
        result["probe"] = probe_blocks(module, datamodule, cfg.split, device, cfg.limit_batches, out_dir)
    write_json(out_dir / "eval_metrics.json", result)
    return result


def probe_blocks(module: Any, datamodule: Any, split: str, device: torch.device, limit_batches: int | None,
                 out_dir: Path) -> list[dict[str, Any]]:
    """``probe=linear``: a linear probe per block (vitlab.probe), fitted on the training images and
    scored on ``split``; printed, and written to probe.csv."""
    from vitlab.probe import linear_probes

    if not hasattr(datamodule, "train_eval_dataloader"):
        raise ConfigError(f"probe: {type(datamodule).__name__} has no training images to fit a probe on; "
                          "probe on a data config with a train split (e.g. the run's own data)")
    score_loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    if isinstance(score_loader, (list, tuple)):
        raise ConfigError("probe: the data has several test sets; probe on a data config with one")
    results = linear_probes(getattr(module, "net", module), datamodule.train_eval_dataloader(), score_loader,
                            module.num_classes, device, limit_batches)
    with open(out_dir / PROBE_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["block", "channels", "train_top1", f"{split}_top1", "train_images", f"{split}_images"])
        for r in results:
            writer.writerow([r.block, r.channels, f"{r.train_top1:.4f}", f"{r.top1:.4f}", r.train_images, r.images])
    print(f"linear probe per block (fitted on {results[0].train_images} training images, scored on {results[0].images}):")
    for r in results:
        print(f"  {r.block}: {split} top-1 {_pct(r.top1)} (train {_pct(r.train_top1)}, {r.channels} features)")
    return [r.as_record() for r in results]


def check_classes_match(module: Any, datamodule: Any, model_name: str) -> None:
    """A network scored on data with another number of classes gives a meaningless top-1."""
    have, data = getattr(module, "num_classes", None), getattr(datamodule, "num_classes", None)
    if have is not None and data is not None and have != data:
        raise ConfigError(
            f"data.num_classes: the checkpoint's {model_name} classifies {have} classes but the data has {data}; "
            "score it on data with the run's classes (leave data= out to use the run's own data)"
        )


class Scorer:
    """Loss, top-1/top-5 and timing of a module over data loaders (see the module docstring)."""

    def __init__(self, module, device: torch.device, precision: str, label_smoothing: float, warmup_iters: int = 5,
                 limit_batches: int | None = None, inference: str = "eager"):
        self.module, self.device = module, device
        self.label_smoothing = label_smoothing
        self.warmup_iters, self.limit_batches = warmup_iters, limit_batches
        self.warmed_up = False
        self.precision = resolve_precision(precision)
        self.input_dtype = self.precision.cast_dtype
        if self.input_dtype is not None:
            module.to(self.input_dtype)
        # hardware.inference other than eager scores an inference-only copy of the network; the module
        # (and so the checkpoint) stays as it is.
        self.network = inference_network(module, inference)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast_context(self.device):
            return self.network(x)

    @torch.no_grad()
    def score(self, loader, seen: Predictions | None = None) -> dict[str, float]:
        """The set's scores; ``seen`` (if given) gathers the pictures' predictions in the same pass."""
        num_classes = self.module.num_classes
        k = min(5, num_classes)
        images = batches = correct1 = correct5 = 0
        loss = loss_smoothed = 0.0
        watch = Stopwatch(self.device)
        for i, (x, y) in enumerate(loader):
            if self.limit_batches is not None and i >= self.limit_batches:
                break
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.input_dtype is not None:
                x = x.to(self.input_dtype)
            if not self.warmed_up:  # kernels selected, caches filled, clocks up: none of it timed
                for _ in range(self.warmup_iters):
                    self._forward(x)
                self.warmed_up = True
            watch.start()
            logits = self._forward(x)
            watch.stop()
            logits = logits.float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            loss_smoothed += F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="sum").item()
            top = logits.topk(k, dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            if seen is not None:
                seen.update(x, y, top)
            images += y.shape[0]
            batches += 1
        if images == 0:
            raise ConfigError("data: the evaluated split holds no images; check the data config (subset, sizes)")
        elapsed = watch.total
        return {
            "images": images,
            "partial": images < len(loader.dataset),  # a limit_batches prefix, not the whole split
            "loss": loss / images,
            "loss_smoothed": loss_smoothed / images,
            "top1": correct1 / images,
            "top5": correct5 / images,
            "ms_per_batch": 1000 * elapsed / batches,
            "images_per_s": images / elapsed,
        }


def _score_datamodule(datamodule, split: str, scorer: Scorer,
                      pictures: Pictures | None = None) -> dict[str, dict[str, float]]:
    """``{set name: scores}``; a DataModule with several test loaders names them by its ``names``.
    ``pictures`` draws the set named ``all`` (a DataModule with one test loader)."""
    datamodule.setup("test" if split == "test" else "validate")
    loaders = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    names = list(getattr(datamodule, "names", None) or [])
    if len(names) != len(loaders):
        names = ["all"] if len(loaders) == 1 else [f"set_{i}" for i in range(len(loaders))]
    scores = {}
    for name, loader in zip(names, loaders):
        seen = Predictions(scorer.module.num_classes, pictures.num_images) if pictures and name == "all" else None
        scores[name] = s = scorer.score(loader, seen)
        of = f" of {len(loader.dataset)} (partial)" if s["partial"] else ""
        print(
            f"{name}: {s['images']}{of} images | loss {s['loss']:.4f} (smoothed {s['loss_smoothed']:.4f}) | "
            f"top-1 {_pct(s['top1'])} | top-5 {_pct(s['top5'])} | {s['ms_per_batch']:.2f} ms/batch | {s['images_per_s']:.1f} images/s"
        )
        if seen is not None:
            pictures.write(seen, datamodule, s)
    return scores


def _run_data(run) -> DictConfig:
    if run.config is None or "data" not in run.config:
        raise ConfigError(f"data: no data config given and no config.yaml in {run.run_dir}; add data=<data config>")
    return run.config.data


def _data_name(node: DictConfig) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


# --------------------------------------------------------------------------------------- pictures
class Predictions:
    """What the pictures of one set need, gathered batch by batch inside :meth:`Scorer.score`: the
    confusion matrix (torchmetrics, on the scoring device), the top-5 hits per true class, and the
    first ``num_images`` images (as the loader gave them, on the CPU) with their labels and top-1."""

    def __init__(self, num_classes: int, num_images: int):
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.num_classes, self.num_images = num_classes, num_images
        self.confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.top5_hits: torch.Tensor | None = None
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        self.predicted: list[int] = []

    def update(self, x: torch.Tensor, y: torch.Tensor, top: torch.Tensor) -> None:
        if self.top5_hits is None:
            self.confusion = self.confusion.to(y.device)
            self.top5_hits = torch.zeros(self.num_classes, dtype=torch.long, device=y.device)
        self.confusion.update(top[:, 0], y)
        self.top5_hits += torch.bincount(y[(top == y[:, None]).any(dim=1)], minlength=self.num_classes)
        want = self.num_images - len(self.labels)
        if want > 0:
            self.images.append(x[:want].detach().float().cpu())
            self.labels += y[:want].tolist()
            self.predicted += top[:want, 0].tolist()

    def matrix(self) -> torch.Tensor:
        """``(C, C)`` counts: row = true class, column = predicted class."""
        return self.confusion.compute().cpu()


class Pictures:
    """Writes :data:`PICTURE_FILES` of a scored set into ``out_dir``; ``title`` names the model and data."""

    def __init__(self, out_dir: Path, num_images: int, title: str):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
            raise ConfigError(f"picture_images: expected a number of images >= 0, got {num_images!r}")
        self.out_dir, self.num_images, self.title = out_dir, num_images, title

    def write(self, seen: Predictions, datamodule: Any, scores: dict[str, Any]) -> None:
        from vitlab.viz import confusion_figure, denormalise, predictions_figure, save_figure

        matrix = seen.matrix()
        names = class_names(datamodule, seen.num_classes)
        write_confusion_csv(self.out_dir / "confusion_matrix.csv", matrix, names)
        write_per_class_csv(self.out_dir / "per_class.csv", matrix, seen.top5_hits.cpu(), names)
        partial = " (partial: a limit_batches prefix)" if scores["partial"] else ""
        about = f"{self.title}: {scores['images']} images{partial}, top-1 {_pct(scores['top1'])} %"
        save_figure(confusion_figure(matrix, names, f"{about} (rows: true class, normalised)"),
                    self.out_dir / "confusion_matrix.png")
        if seen.images:
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            images = denormalise(torch.cat(seen.images), mean, std)
            wrong = sum(p != t for p, t in zip(seen.predicted, seen.labels))
            save_figure(predictions_figure(images, seen.labels, seen.predicted, names,
                                           f"{about}; the first {len(seen.labels)} images of the eval order, "
                                           f"{wrong} wrong (red)"),
                        self.out_dir / "predictions.png")


def class_names(datamodule: Any, num_classes: int) -> list[str]:
    """The data's names of its classes in label order (``class_names``, else ``classes``), else the labels."""
    for attribute in ("class_names", "classes"):
        try:
            names = getattr(datamodule, attribute, None)
        except (VitlabError, OSError):  # names a DataModule reads from files it lacks
            names = None
        if names is not None and not callable(names) and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(label) for label in range(num_classes)]


def write_confusion_csv(path: Path, matrix: torch.Tensor, names: list[str]) -> None:
    """Counts with a header row of predicted classes and a first column of true classes."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, matrix.tolist()):
            writer.writerow([name, *row])


def write_per_class_csv(path: Path, matrix: torch.Tensor, top5_hits: torch.Tensor, names: list[str]) -> None:
    """Per true class: label, name, images, top-1 and top-5 (fractions; empty for a class without images)."""
    images = matrix.sum(dim=1).tolist()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "class", "images", "top1", "top5"])
        for label, name in enumerate(names):
            n = images[label]
            top1 = f"{matrix[label, label].item() / n:.6f}" if n else ""
            top5 = f"{top5_hits[label].item() / n:.6f}" if n else ""
            writer.writerow([label, name, n, top1, top5])


# ------------------------------------------------------------------------------------- robustness
def corruption_table(sets: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
    """``{corruption: {severity: top1}}`` from sets named ``<corruption>/<severity>``; empty if the
    sets are not corruption-structured."""
    table: dict[str, dict[int, float]] = {}
    for name, scores in sets.items():
        match = _CORRUPTION_SET.match(name)
        if not match:
            return {}
        table.setdefault(match["corruption"], {})[int(match["severity"])] = scores["top1"]
    return table


def read_reference(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "robustness.json"
    if not file.is_file():
        raise ConfigError(f"reference: no robustness.json at {file.resolve()}; give a file written by vitlab.evaluate on corruption data")
    data = json.loads(file.read_text())
    if "table" not in data:
        raise ConfigError(f"reference: {file.resolve()} holds no corruption table; give a robustness.json written by vitlab.evaluate")
    data["table"] = {c: {int(s): v for s, v in row.items()} for c, row in data["table"].items()}
    return data


def robustness_summary(table: dict[str, dict[int, float]], clean_top1: float | None, reference: dict | None = None) -> dict[str, Any]:
    """Means over the table, and against a reference: mCE = mean over corruptions of
    sum_s err(c, s) / sum_s err_ref(c, s), relative mCE the same with the clean error subtracted from
    both (Hendrycks & Dietterich), in %. Errors are 1 - top-1."""
    severities = sorted({s for row in table.values() for s in row})
    values = [v for row in table.values() for v in row.values()]
    summary: dict[str, Any] = {
        "clean_top1": clean_top1,
        "mean_corrupted_top1": sum(values) / len(values),
        "table": table,
        "per_corruption": {c: sum(row.values()) / len(row) for c, row in table.items()},
        "per_severity": {s: _mean([row[s] for row in table.values() if s in row]) for s in severities},
        "mce": None,
        "relative_mce": None,
    }
    if reference is not None:
        ref = reference["table"]
        absent = [f"{c}/{s}" for c, row in table.items() for s in row if s not in ref.get(c, {})]
        if absent:
            raise ConfigError(f"reference: the reference table lacks {', '.join(absent[:3])}; evaluate both on the same corruptions and severities")
        ces, rel = [], []
        ref_clean = reference.get("clean_top1")
        for c, row in table.items():
            err = sum(1 - v for v in row.values())
            ref_err = sum(1 - ref[c][s] for s in row)
            if ref_err > 0:  # a reference that never errs on c leaves c out
                ces.append(err / ref_err)
            if clean_top1 is not None and ref_clean is not None:
                num = sum((1 - v) - (1 - clean_top1) for v in row.values())
                den = sum((1 - ref[c][s]) - (1 - ref_clean) for s in row)
                if den > 0:  # the reference must lose accuracy on c for a relative figure
                    rel.append(num / den)
        summary["mce"] = 100 * _mean(ces) if ces else None
        summary["relative_mce"] = 100 * _mean(rel) if rel else None
        summary["reference"] = reference.get("model")
    return summary


def write_robustness(out_dir: Path, summary: dict[str, Any], model: str) -> None:
    table = summary["table"]
    severities = sorted(summary["per_severity"])
    write_json(out_dir / "robustness.json", {"model": model, **summary})
    with (out_dir / "robustness.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["corruption", *[f"severity_{s}" for s in severities], "mean"])
        for c, row in table.items():
            writer.writerow([c, *[_csv(row.get(s)) for s in severities], _csv(summary["per_corruption"][c])])
        writer.writerow(["mean", *[_csv(summary["per_severity"][s]) for s in severities], _csv(summary["mean_corrupted_top1"])])
    lines = [
        f"Top-1 (%) of {model} per corruption and severity.",
        "",
        f"Clean top-1: {_pct(summary['clean_top1'])}; mean corrupted top-1: {_pct(summary['mean_corrupted_top1'])}"
        + (f"; mCE {_num(summary['mce'])}; relative mCE {_num(summary['relative_mce'])} (reference: {summary.get('reference')})" if "reference" in summary else ""),
        "",
        "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
        "|---|" + "---|" * (len(severities) + 1),
    ]
    for c, row in table.items():
        lines.append(f"| {c} | " + " | ".join(_pct(row.get(s)) for s in severities) + f" | {_pct(summary['per_corruption'][c])} |")
    lines.append("| **mean** | " + " | ".join(_pct(summary["per_severity"][s]) for s in severities) + f" | **{_pct(summary['mean_corrupted_top1'])}** |")
    (out_dir / "robustness.md").write_text("\n".join(lines) + "\n")
    _plot_robustness(out_dir, summary, model)


def _plot_robustness(out_dir: Path, summary: dict[str, Any], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = summary["clean_top1"]
    per_c = summary["per_corruption"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(per_c) + 2), 4))
    ax.bar(range(len(per_c)), [100 * v for v in per_c.values()], color="tab:blue")
    ax.set_xticks(range(len(per_c)), list(per_c), rotation=45, ha="right")
    if clean is not None:
        ax.axhline(100 * clean, color="k", linestyle="--", label=f"clean {100 * clean:.1f}")
        ax.legend()
    ax.set_ylabel("top-1 (%), mean over severities")
    ax.set_title(f"{model}: top-1 per corruption")
    fig.tight_layout()
    fig.savefig(out_dir / "robustness_per_corruption.png", dpi=100)
    plt.close(fig)

    per_s = summary["per_severity"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(list(per_s), [100 * v for v in per_s.values()], marker="o", label="mean over corruptions")
    if clean is not None:
        ax.axhline(100 * clean, color="k", linestyle="--", label=f"clean {100 * clean:.1f}")
    ax.set_xticks(list(per_s))
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{model}: top-1 per severity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "robustness_per_severity.png", dpi=100)
    plt.close(fig)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _csv(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    with one_line_errors():
        evaluate(cfg)


def main() -> None:
    run_entry_point(
        _hydra_main,
        partial(print_help, conf_dir=CONF_DIR, config_name="evaluate"),
        partial(print_resolved_config, conf_dir=CONF_DIR, config_name="evaluate"),
        partial(check_group_choices, conf_dir=CONF_DIR),
    )


if __name__ == "__main__":
    main()
