"""``python -m vitlab.bench``: params, MACs, train/inference images/s, peak memory and MFU per network.

    python -m vitlab.bench                                    # every registered network, fp32
    python -m vitlab.bench mini_vit outgrid_7m --against timm # with each network's timm counterpart
    python -m vitlab.bench outgrid_7m:grid_sizes=[4,4,2,1] --batch-size 64 --channels-last
    python -m vitlab.bench vit --precision bf16 --compile --sdpa-backend flash   # on a GPU
    python -m vitlab.bench --mode flops                       # the FLOPs/MACs table only, nothing timed
    python -m vitlab.bench vit vit_rope vit_diffsim --relative-to vit --mode train --batch-size 32

Models are registry names (``vitlab.models.list_models()``, the default is all of them), optionally
with constructor settings after a colon (``name:key=value,key=value``, values read as YAML), or
``timm:<timm name>``. Each runs at its dataset size: the ``img_size`` and ``num_classes`` its
registry entry defaults to (``--img-size`` / ``--num-classes`` override). On synthetic tensors, so
no data loading is timed.

A train step is forward + cross-entropy + backward + AdamW step (fused, as training uses it); an inference step is
a forward under ``inference_mode``. Images/s is the batch over the median of ``--iters`` timed steps
after ``--warmup`` untimed ones (:func:`vitlab.measure.time_in_turn`). ``--against timm`` adds, after
each network that names one (``net.timm_reference()``), its timm counterpart at the same shape, and
times the two step by step in turn, so load from other processes hits both alike and their ratio
stays meaningful on a shared CPU. ``--relative-to MODEL`` times all the networks given in turn and
adds each one's parameter difference and train-speed ratio to MODEL (the ablation variants of one
family against their baseline).

MACs/img, "MACs w/o SDPA" (what fvcore, and so the seeds' tables, count) and the train FLOPs come from
:func:`vitlab.measure.image_flops`, the count the FLOPs callback writes into ``metrics.json``. MFU is
:func:`vitlab.measure.mfu` against a large matmul timed in the same process, in the run's compute
dtype. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU, where torch keeps no
allocator statistics, it is estimated as parameters + gradients + two AdamW moments + the tensors
autograd saves for backward (marked ``~``).

Writes ``<out>.csv`` and ``<out>.md`` (default ``bench/out/<date>_<time>``; an existing file is
never overwritten) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vitlab import measure
from vitlab.cli import exit_with_error
from vitlab.errors import ConfigError, VitlabError
from vitlab.inference import INFERENCE_MODES, prepare_for_inference
from vitlab.layers.attention import SDPA_BACKENDS, sdpa_backend
from vitlab.models import create_model, get_model_config, list_models
from vitlab.optim import FUSED_DEVICES
from vitlab.utils import reuse_freed_memory

PRECISIONS = measure.BENCH_PRECISIONS
FALLBACK_IMG_SIZE = 32


# ----------------------------------------------------------------------------------------- models
@dataclass
class Subject:
    """One row of the table: a built network and the input it is measured at."""

    label: str
    net: nn.Module
    img_size: int
    num_classes: int
    reference_of: str | None = None  # the row this one is the timm counterpart of
    results: dict = field(default_factory=dict)


def parse_spec(spec: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, settings); values are read as YAML."""
    name, _, settings = spec.partition(":")
    if name == "timm":
        name, _, settings = settings.partition(":")
        name = f"timm:{name}"
    kwargs = {}
    for item in filter(None, _split_settings(settings)):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{spec}: settings are key=value pairs after the colon, got {item!r}")
        kwargs[key] = yaml.safe_load(value)
    return name, kwargs


def _split_settings(settings: str) -> Iterator[str]:
    # Commas inside brackets belong to a list value: grid_sizes=[4,4,2,1],drop_rate=0.1.
    depth, start = 0, 0
    for i, char in enumerate(settings):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            yield settings[start:i]
            start = i + 1
    yield settings[start:]


def dataset_input(name: str, net: nn.Module, kwargs: dict) -> int:
    """The image size a network is meant for: the caller's setting, else its registry entry's default
    (``img_size`` of the entry's config, or the built network's ``img_size``), else 32."""
    if "img_size" in kwargs:
        return int(kwargs["img_size"])
    if name in list_models():
        size = getattr(get_model_config(name), "img_size", None)
        if isinstance(size, int):
            return size
    size = getattr(net, "img_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else FALLBACK_IMG_SIZE


def build_subject(spec: str, img_size: int | None = None, num_classes: int | None = None) -> Subject:
    name, kwargs = parse_spec(spec)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith("timm:"):
        kwargs.setdefault("img_size", FALLBACK_IMG_SIZE)
        try:
            net = timm.create_model(name[5:], **kwargs)
        except RuntimeError as err:
            raise ConfigError(f"{spec}: {str(err).splitlines()[0]}") from None
    else:
        net = create_model(name, **kwargs)
    size = dataset_input(name, net, kwargs)
    return Subject(spec, net, size, int(getattr(net, "num_classes", kwargs.get("num_classes", 1000))))


def reference_subject(subject: Subject) -> Subject | None:
    """The network's timm counterpart at the same shape, when its class names one."""
    make = getattr(subject.net, "timm_reference", None)
    if make is None:
        return None
    label, net = make()
    return Subject(f"timm:{label}", net, subject.img_size, subject.num_classes, reference_of=subject.label)


# ----------------------------------------------------------------------------------------- measuring
def count(subject: Subject) -> measure.ImageFlops:
    """The subject's per-image FLOPs: :func:`vitlab.measure.image_flops`, the count the FLOPs callback
    writes into ``metrics.json`` (so the two agree for the same network and image size)."""
    return measure.image_flops(subject.net, subject.img_size)


@dataclass
class Switches:
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    batch_size: int = 128
    sdpa_backend: str = "auto"
    timer: str = "wall"
    inference: str = "eager"  # the inference step's vitlab.inference mode

    def autocast(self) -> contextlib.AbstractContextManager:
        return measure.resolve_precision(self.precision).autocast_context(self.device)


def make_steps(subject: Subject, sw: Switches) -> dict[str, Callable[[], None]]:
    """The train and inference step closures of one subject, its network moved to the device."""
    layout = torch.channels_last if sw.channels_last else torch.contiguous_format
    net = subject.net.to(sw.device, memory_format=layout)
    model = torch.compile(net) if sw.compile else net
    x = torch.randn(sw.batch_size, 3, subject.img_size, subject.img_size, device=sw.device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, subject.num_classes, (sw.batch_size,), device=sw.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=sw.device.type in FUSED_DEVICES)
    scaler = torch.amp.GradScaler(sw.device.type, enabled=sw.precision == "fp16")

    def train() -> None:
        net.train()
        with sw.autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    fast: list[nn.Module] = []  # the inference copy, made on the first inference step

    def infer() -> None:
        if sw.inference == "eager":
            net.eval()
            runner = model
        else:
            if not fast:
                fast.append(prepare_for_inference(net, sw.inference))
            runner = fast[0]
        with torch.inference_mode(), sw.autocast():
            runner(x)

    return {"train": train, "infer": infer}


TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}


def peak_memory(subject: Subject, sw: Switches) -> tuple[float, bool]:
    """(peak bytes of a train step, measured?): the CUDA allocator's peak, or on CPU an estimate from
    the weights, gradients and AdamW moments plus the tensors autograd saves for backward."""
    if sw.device.type == "cuda":
        train = make_steps(subject, Switches(**{**sw.__dict__, "compile": False}))["train"]
        return float(measure.cuda_peak_memory(train, sw.device)), True
    net = subject.net.train()
    x = torch.randn(sw.batch_size, 3, subject.img_size, subject.img_size)
    params = list(net.parameters())
    with sw.autocast():
        activations = measure.saved_tensor_bytes(lambda: net(x), exclude=params)
    return float(activations + measure.train_state_bytes(params)), False


# ----------------------------------------------------------------------------------------- run
def run_measurements(subjects: list[Subject], sw: Switches, modes: list[str], warmup: int, iters: int,
                     after_group: Callable[[], None] = lambda: None, together: bool = False) -> None:
    """Fill every subject's ``results``; a network and its reference (``together``: all subjects)
    are timed in turn. ``after_group`` runs after each group is done."""
    groups: list[list[Subject]] = []
    for subject in subjects:
        if groups and (together or (subject.reference_of is not None and groups[-1][0].label == subject.reference_of)):
            groups[-1].append(subject)
        else:
            groups.append([subject])
    for group in groups:
        for subject in group:
            flops = count(subject)
            mem, measured = peak_memory(subject, sw)
            subject.results.update(
                params=sum(p.numel() for p in subject.net.parameters()),
                macs=flops.macs,
                macs_without_sdpa=flops.macs_without_sdpa,
                train_flops=flops.train_step,
                peak_mem_mb=mem / 2**20,
                mem_measured=measured,
            )
        steps = [make_steps(s, sw) for s in group]
        with sdpa_backend(sw.sdpa_backend):
            for mode in modes:
                seconds = measure.time_in_turn([s[mode] for s in steps], warmup, iters, sw.device, TIMERS[sw.timer])
                for subject, sec in zip(group, seconds):
                    subject.results[f"{mode}_ips"] = sw.batch_size / sec
                    subject.results[f"{mode}_ms"] = 1000 * sec
        for subject in group:
            subject.net.to("cpu")
            print(f"# measured {subject.label}", file=sys.stderr, flush=True)
        after_group()


COLUMNS = ["model", "px", "classes", "params", "MACs/img", "MACs w/o SDPA", "train img/s", "infer img/s",
           "train ms/step", "peak MB", "MFU %", "vs timm"]
FLOPS_COLUMNS = ["model", "px", "classes", "params", "MACs/img", "MACs w/o SDPA", "train FLOPs/img"]


def columns(mode: str, relative_to: str | None) -> list[str]:
    base = FLOPS_COLUMNS if mode == "flops" else COLUMNS
    return base + (["params vs base", f"train vs {relative_to}"] if relative_to and mode != "flops" else [])


def _millions(value: float) -> str:
    return f"{value / 1e6:.1f}M" if value < 100e6 else f"{value / 1e6:.0f}M"


def rows(subjects: list[Subject], peak: float | None, relative_to: str | None = None) -> list[dict[str, str]]:
    by_label = {s.label: s for s in subjects}
    base = by_label.get(relative_to) if relative_to else None
    out = []
    for s in subjects:
        if not s.results:
            continue
        r = s.results
        train = r.get("train_ips")
        ratio = "-"
        reference = next((t for t in subjects if t.reference_of == s.label), None)
        if reference is not None and train and reference.results.get("train_ips"):
            ratio = f"{train / reference.results['train_ips']:.2f}x train"
            if r.get("infer_ips") and reference.results.get("infer_ips"):
                ratio += f", {r['infer_ips'] / reference.results['infer_ips']:.2f}x infer"
        label = s.label if s.reference_of is None else f"{s.label} (ref. of {by_label[s.reference_of].label})"
        row = {
            "model": label,
            "px": str(s.img_size),
            "classes": str(s.num_classes),
            "params": f"{r['params'] / 1e6:.2f}M",
            "MACs/img": _millions(r["macs"]),
            "MACs w/o SDPA": _millions(r["macs_without_sdpa"]),
            "train FLOPs/img": _millions(r["train_flops"]),
            "train img/s": f"{train:.1f}" if train else "-",
            "infer img/s": f"{r['infer_ips']:.1f}" if r.get("infer_ips") else "-",
            "train ms/step": f"{r['train_ms']:.0f}" if train else "-",
            "peak MB": ("" if r.get("mem_measured") else "~") + f"{r['peak_mem_mb']:.0f}" if "peak_mem_mb" in r else "-",
            "MFU %": f"{100 * measure.mfu(r['train_flops'], train, peak):.1f}" if train and peak else "-",
            "vs timm": ratio,
        }
        if base is not None:
            row["params vs base"] = f"{r['params'] - base.results['params']:+,}"
            base_train = base.results.get("train_ips")
            row[f"train vs {relative_to}"] = f"{train / base_train:.2f}x" if train and base_train else "-"
        out.append(row)
    return out


def markdown(table: list[dict[str, str]], header: list[str], cols: list[str] = COLUMNS) -> str:
    lines = [*(f"# {h}" for h in header), "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in cols) + " |" for row in table]
    return "\n".join(lines) + "\n"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads, nproc {os.cpu_count()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vitlab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="registry names with optional :key=value settings, or timm:<name>; default all")
    parser.add_argument("--against", choices=["timm"], help="add each network's timm counterpart, timed in turn with it")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, help="override every network's dataset image size")
    parser.add_argument("--num-classes", type=int, help="override every network's number of classes")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16/fp16: autocast (fp16 on CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (compile time falls in the warm-up)")
    parser.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator as it is (default: reuse freed memory, as training does)")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="eager",
                        help="the inference step's mode (vitlab.inference): eager, fused or compiled")
    parser.add_argument("--mode", choices=["train", "infer", "both", "flops"], default="both",
                        help="flops: params and FLOPs/MACs only (with and without SDPA), nothing timed")
    parser.add_argument("--relative-to", metavar="MODEL",
                        help="time every network in turn with this one (one of the models given) and add the params "
                             "difference and the train img/s ratio to it, e.g. the clear-vit variants against vit")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timer", choices=list(TIMERS), default="wall",
                        help="cpu: this process's CPU time per step; with --threads 1 on a CPU shared with other jobs "
                             "it is what one dedicated core would take, where wall time also counts the waiting")
    parser.add_argument("--out", type=Path, help="write <out>.csv and <out>.md (default bench/out/<date>_<time>)")
    args = parser.parse_args(argv)
    args.command = " ".join(sys.argv[1:] if argv is None else argv)
    return args


def check_args(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA GPU is visible; use --device cpu")
    if args.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16: fp16 autocast needs a CUDA GPU; on CPU use fp32 or bf16")
    if args.timer == "cpu" and device.type == "cuda":
        raise ConfigError("--timer cpu: CPU time does not count GPU work; use --timer wall on CUDA")
    if args.sdpa_backend in ("efficient", "cudnn") and device.type != "cuda":
        raise ConfigError(f"--sdpa-backend {args.sdpa_backend}: a CUDA-only kernel; on CPU use auto, math or flash")
    if args.relative_to and args.relative_to not in args.models:
        raise ConfigError(f"--relative-to {args.relative_to}: not among the models given; name it as a model too")
    for key in ("batch_size", "warmup", "iters"):
        if getattr(args, key) < (1 if key != "warmup" else 0):
            raise ConfigError(f"--{key.replace('_', '-')}: must be positive, got {getattr(args, key)}")
    return device


def output_paths(out: Path | None) -> tuple[Path, Path]:
    stem = out or Path("bench/out") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    for path in (csv_path, md_path):
        if path.exists():
            raise ConfigError(f"--out: {path} already exists; give another --out or move the old file")
    return csv_path, md_path


def run(args: argparse.Namespace) -> tuple[list[dict[str, str]], str]:
    device = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    csv_path, md_path = output_paths(args.out)
    specs = args.models or list_models()
    subjects: list[Subject] = []
    for spec in specs:
        torch.manual_seed(0)
        subject = build_subject(spec, args.img_size, args.num_classes)
        subjects.append(subject)
        if args.against == "timm":
            reference = reference_subject(subject)
            if reference is not None:
                subjects.append(reference)
    sw = Switches(device, args.precision, args.channels_last, args.compile, args.batch_size, args.sdpa_backend, args.timer, args.inference)
    started = datetime.now()
    write = partial(write_results, subjects, args, device, started, csv_path, md_path)
    if args.mode == "flops":
        for subject in subjects:
            flops = count(subject)
            subject.results.update(params=sum(p.numel() for p in subject.net.parameters()), macs=flops.macs,
                                   macs_without_sdpa=flops.macs_without_sdpa, train_flops=flops.train_step)
        table, text = write(None)
        return table, text + f"\nwrote {csv_path} and {md_path}\n"
    dtype = measure.resolve_precision(args.precision).dtype
    peak_of = partial(measure.measure_peak_flops, device, dtype, seconds=1.0, clock=TIMERS[args.timer], cache=False)
    peak = peak_of()
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    # The files are rewritten after every group, so a long run that is stopped keeps what it measured.
    run_measurements(subjects, sw, modes, args.warmup, args.iters, after_group=lambda: write(peak),
                     together=bool(args.relative_to))
    peak = max(peak, peak_of())  # the better of before and after
    table, text = write(peak)
    return table, text + f"\nwrote {csv_path} and {md_path}\n"


def write_results(subjects: list[Subject], args: argparse.Namespace, device: torch.device, started: datetime,
                  csv_path: Path, md_path: Path, peak: float | None) -> tuple[list[dict[str, str]], str]:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    header = [
        f"{started:%Y-%m-%d %H:%M} | {device_name(device)} | torch {torch.__version__} | timm {timm.__version__}",
        f"python -m vitlab.bench {args.command}".rstrip(),
    ]
    if args.mode == "flops":
        header.append("FLOPs per image from vitlab.measure.image_flops (MACs = FLOPs / 2; w/o SDPA = fvcore's view); "
                      "nothing timed")
    else:
        header += [
            f"batch {args.batch_size} | {args.precision} | channels_last {'on' if args.channels_last else 'off'} | "
            f"compile {'on' if args.compile else 'off'} | inference {args.inference} | sdpa {args.sdpa_backend} | warm-up {args.warmup}, median of "
            f"{args.iters} | {args.timer} time | malloc {'system' if args.system_malloc else 'reuse freed'}",
            f"peak {args.precision} matmul {peak / 1e9:.1f} GFLOP/s (measured here) | load average at the end {load}",
        ]
    table = rows(subjects, peak, args.relative_to)
    text = markdown(table, header, columns(args.mode, args.relative_to))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "reference_of", "img_size", "num_classes", "params", "macs_per_img",
                         "macs_per_img_without_sdpa", "train_flops_per_img", "train_img_s", "infer_img_s", "train_ms",
                         "infer_ms", "peak_mem_mb", "peak_mem_measured", "mfu", "peak_flops", "precision",
                         "channels_last", "compile", "batch_size", "device"])
        for s in subjects:
            r = s.results
            if not r:
                continue
            mfu = measure.mfu(r["train_flops"], r["train_ips"], peak) if "train_ips" in r and peak else ""
            writer.writerow([s.label, s.reference_of or "", s.img_size, s.num_classes, r["params"], r["macs"],
                             r["macs_without_sdpa"], r["train_flops"], r.get("train_ips", ""), r.get("infer_ips", ""),
                             r.get("train_ms", ""), r.get("infer_ms", ""), r.get("peak_mem_mb", ""),
                             r.get("mem_measured", ""), mfu, peak or "", args.precision, args.channels_last,
                             args.compile, args.batch_size, device_name(device)])
    return table, text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.system_malloc:
        reuse_freed_memory()
    try:
        _, text = run(args)
    except VitlabError as err:
        exit_with_error(err)
    print(text, end="")


if __name__ == "__main__":
    main()
