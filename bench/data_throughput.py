"""DataModule throughput: decoded + augmented training images/s for 0, 1, 2 ... loader workers.

    python bench/data_throughput.py                                   # CIFAR-10 JPEG folder, mini_vit recipe
    python bench/data_throughput.py --root ../shared/data/cifar10-jpg --workers 0 1 2 --batches 20 --batch-size 256
    python bench/data_throughput.py --cache --model none              # also with decoded images cached in memory
    python bench/data_throughput.py --device-pipeline --recipe mini_vit outgrid --rounds 2 --model none
    python bench/data_throughput.py --device-pipeline --end-to-end    # + Mini-ViT train img/s fed by each pipeline

Reads the CIFAR-10 JPEG folder (``<root>/train/<class>/*.jpg``) with the project's
``ImageFolderDataModule`` and the augmentation of a recipe (``conf/recipe/<recipe>.yaml``, default
``mini_vit``: flip, pad-4 crop, AutoAugment CIFAR-10, random erasing .25), then times ``--batches``
batches of the train loader after one untimed warm-up batch (which also absorbs the worker start-up,
reported apart). The main process runs with one torch thread, as each loader worker does, so the
``0`` row is the cost of one core. ``--cache`` adds rows with every image decoded once into memory
(``data.cache=true``): augmentation only. ``--model`` times that model's training step on
synthetic tensors of the same batch (``python -m vitlab.bench``) to say whether loading keeps up.

``--device-pipeline`` adds ``data.pipeline=device`` rows: the split decoded once into the uint8 cache
(``--cache-dir``), each batch gathered and augmented per sample in the main process (Kornia + the
project's per-sample AutoAugment/RandAugment/erasing), with one torch thread like the ``0`` row. The
sides are timed in turn, ``--rounds`` times, in one process, so a load that changes over the run
touches both alike; each row is the median over the rounds. ``--end-to-end`` times Mini-ViT train
steps (forward, backward, AdamW) fed by each pipeline (``--e2e-workers`` loader workers against the
device pipeline), with ``--model-threads`` torch threads, alternating the sides as well.

Prints a markdown table headed by the date, machine (nproc, CPU model) and the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitlab.datamodules import ImageFolderDataModule  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recipe_augment(name: str) -> dict:
    path = ROOT / "vitlab" / "conf" / "recipe" / f"{name}.yaml"
    if not path.is_file():
        sys.exit(f"error: no recipe file {path}")
    return OmegaConf.to_container(OmegaConf.load(path).augment, resolve=True)


def _batches(dm: ImageFolderDataModule, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train loader's ``(images, labels)`` batches as the model receives them (for the device
    pipeline: positions turned into augmented images by ``on_after_batch_transfer``)."""
    dm.num_workers = workers
    for batch in dm.train_dataloader():
        yield dm.on_after_batch_transfer(batch, 0)


def time_loader(dm: ImageFolderDataModule, workers: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``batches`` batches)."""
    dm.num_workers = workers
    available = len(dm.train_dataloader())
    if available < batches + 1:
        sys.exit(f"error: the train split gives {available} batches; ask for fewer than {batches + 1}")
    start = time.perf_counter()
    iterator = _batches(dm, workers)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += next(iterator)[0].shape[0]
    rate = images / (time.perf_counter() - start)
    iterator.close()
    return first, rate


def end_to_end_rate(dm: ImageFolderDataModule, workers: int, steps: int, model: str) -> float:
    """Train images/s of ``model`` fed by ``dm``'s train loader: data, forward, backward, AdamW step,
    timed over ``steps`` steps after one untimed step (which absorbs the worker start-up)."""
    import torch.nn.functional as F

    from vitlab.models import create_model

    torch.manual_seed(0)
    net = create_model(model, num_classes=10, img_size=32).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    iterator = _batches(dm, workers)
    images = 0
    for step in range(steps + 1):
        if step == 1:
            start, images = time.perf_counter(), 0
        x, y = next(iterator)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images += x.shape[0]
    rate = images / (time.perf_counter() - start)
    iterator.close()
    return rate


def model_train_rate(name: str, batch: int, img_size: int, threads: int) -> float:
    from vitlab.bench import Switches, build_subject, make_steps, time_in_turn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    subject = build_subject(name, img_size, 10)
    step = make_steps(subject, Switches(torch.device("cpu"), batch_size=batch))["train"]
    return batch / time_in_turn([step], warmup=1, iters=3, device=torch.device("cpu"))[0]


def main() -> None:
    default_root = (ROOT.parent / "shared" / "data" / "cifar10-jpg").resolve()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=default_root, help=f"CIFAR-10 JPEG folder ({default_root})")
    parser.add_argument("--recipe", nargs="+", default=["mini_vit"], help="conf/recipe/<name>.yaml augment block(s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cache", action="store_true", help="also time with decoded images cached in memory")
    parser.add_argument("--device-pipeline", action="store_true", help="also time data.pipeline=device")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache", help="data.cache_dir for it")
    parser.add_argument("--rounds", type=int, default=1, help="times each side is timed, in turn")
    parser.add_argument("--end-to-end", action="store_true", help="Mini-ViT train img/s fed by each pipeline")
    parser.add_argument("--e2e-workers", type=int, default=2, help="loader workers of the workers side")
    parser.add_argument("--e2e-batch-size", type=int, default=64)
    parser.add_argument("--e2e-steps", type=int, default=4)
    parser.add_argument("--model", default="mini_vit", help="time this model's CPU train step; 'none' to skip")
    parser.add_argument("--model-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    uptime_before = _uptime()
    torch.set_num_threads(1)
    rows, e2e = [], []
    for recipe in args.recipe:
        augment = recipe_augment(recipe)
        options = dict(num_classes=10, img_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, val_size=0, augment=augment,
                       batch_size=args.batch_size, pin_memory=False, persistent_workers=False, test_dir="test",
                       cache_dir=str(args.cache_dir))
        variants = [("workers", False), *([("workers", True)] if args.cache else []),
                    *([("device", False)] if args.device_pipeline else [])]
        modules = {}
        for pipeline, cached in variants:
            dm = ImageFolderDataModule(str(args.root), num_workers=max(args.workers), cache=cached,
                                       pipeline=pipeline, **options)
            start = time.perf_counter()
            dm.setup()
            modules[pipeline, cached] = (dm, time.perf_counter() - start)
        timings: dict[tuple, list[tuple[float, float]]] = {}
        for _ in range(args.rounds):  # the sides in turn, so a changing load touches them alike
            for pipeline, cached in variants:
                dm, _ = modules[pipeline, cached]
                for workers in (args.workers if pipeline == "workers" else [0]):
                    timings.setdefault((pipeline, cached, workers), []).append(time_loader(dm, workers, args.batches))
        for (pipeline, cached, workers), results in timings.items():
            first = statistics.median(f for f, _ in results)
            rate = statistics.median(r for _, r in results)
            rows.append((recipe, pipeline, cached, workers, modules[pipeline, cached][1], first, rate, results))
        if args.end_to_end and args.device_pipeline and recipe == args.recipe[0]:
            torch.set_num_threads(args.model_threads)
            for pipeline, _ in [("workers", False), ("device", False)]:
                modules[pipeline, False][0].batch_size = args.e2e_batch_size
            for _ in range(args.rounds):
                for pipeline, workers in (("workers", args.e2e_workers), ("device", 0)):
                    dm = modules[pipeline, False][0]
                    e2e.append((pipeline, workers, end_to_end_rate(dm, workers, args.e2e_steps, "mini_vit")))
            torch.set_num_threads(1)

    model_rate = None
    if args.model != "none":
        model_rate = model_train_rate(args.model, args.batch_size, 32, args.model_threads)

    print(f"# {date.today()} | nproc {os.cpu_count()} | {cpu_model()} | torch {torch.__version__}")
    print(f"# command: python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"# uptime before: {uptime_before}")
    print(f"# uptime after:  {_uptime()}")
    print(f"# {args.root} train split; {args.batches} timed batches of {args.batch_size} after one warm-up batch; "
          f"main process 1 torch thread; median of {args.rounds} round(s), sides in turn")
    print()
    print("| recipe | pipeline | images | workers | setup s | first batch s | img/s (median) | img/s per round "
          "| vs model train |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, pipeline, cached, workers, setup_s, first, rate, results in rows:
        ratio = f"{rate / model_rate:.1f}x" if model_rate else "-"
        if pipeline == "device":
            kind = "uint8 cache, per-sample batch augmentation"
        else:
            kind = "cached (decoded once)" if cached else "JPEG decoded per step"
        per_round = " / ".join(f"{r:,.0f}" for _, r in results)
        print(f"| {recipe} | {pipeline} | {kind} | {workers} | {setup_s:.1f} | {first:.2f} | {rate:,.0f} | {per_round} "
              f"| {ratio} |")
    if e2e:
        print()
        print(f"Mini-ViT end-to-end train (recipe {args.recipe[0]}, batch {args.e2e_batch_size}, {args.e2e_steps} "
              f"timed steps after 1, {args.model_threads} torch thread(s), fp32 CPU):")
        print()
        print("| pipeline | workers | train img/s per round | median |")
        print("|---|---|---|---|")
        for pipeline, workers in (("workers", args.e2e_workers), ("device", 0)):
            rates = [r for p, w, r in e2e if p == pipeline]
            per_round = " / ".join(f"{r:.1f}" for r in rates)
            print(f"| {pipeline} | {workers} | {per_round} | {statistics.median(rates):.1f} |")
    if model_rate:
        print()
        print(f"Model train rate: {args.model} at 32 px, batch {args.batch_size}, fp32 CPU, {args.model_threads} torch "
              f"thread(s), synthetic tensors: {model_rate:,.0f} img/s.")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
