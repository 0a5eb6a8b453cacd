"""DataModule throughput: decoded + augmented training images/s for 0, 1, 2 ... loader workers.

    python bench/data_throughput.py                                   # CIFAR-10 JPEG folder, mini_vit recipe
    python bench/data_throughput.py --root ../shared/data/cifar10-jpg --workers 0 1 2 --batches 20 --batch-size 256
    python bench/data_throughput.py --cache --model none              # also with decoded images cached in memory

Reads the CIFAR-10 JPEG folder (``<root>/train/<class>/*.jpg``) with the project's
``ImageFolderDataModule`` and the augmentation of a recipe (``conf/recipe/<recipe>.yaml``, default
``mini_vit``: flip, pad-4 crop, AutoAugment CIFAR-10, random erasing .25), then times ``--batches``
batches of the train loader after one untimed warm-up batch (which also absorbs the worker start-up,
reported apart). The main process runs with one torch thread, as each loader worker does, so the
``0`` row is the cost of one core. ``--cache`` adds rows with every image decoded once into memory
(``data.cache=true``): augmentation only. ``--model`` times that model's training step on
synthetic tensors of the same batch (``python -m vitlab.bench``) to say whether loading keeps up.

Prints a markdown table headed by the date, machine (nproc, CPU model) and the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
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


def time_loader(dm: ImageFolderDataModule, workers: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``batches`` batches)."""
    dm.num_workers = workers
    loader = dm.train_dataloader()
    if len(loader) < batches + 1:
        sys.exit(f"error: the train split gives {len(loader)} batches; ask for fewer than {batches + 1}")
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += next(iterator)[0].shape[0]
    rate = images / (time.perf_counter() - start)
    del iterator
    return first, rate


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
    parser.add_argument("--recipe", default="mini_vit", help="conf/recipe/<name>.yaml whose augment block is used")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cache", action="store_true", help="also time with decoded images cached in memory")
    parser.add_argument("--model", default="mini_vit", help="time this model's CPU train step; 'none' to skip")
    parser.add_argument("--model-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    augment = recipe_augment(args.recipe)
    options = dict(num_classes=10, img_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, val_size=0, augment=augment,
                   batch_size=args.batch_size, pin_memory=False, persistent_workers=False, test_dir="test")
    torch.set_num_threads(1)
    rows = []
    variants = [False, True] if args.cache else [False]
    for cached in variants:
        dm = ImageFolderDataModule(str(args.root), num_workers=max(args.workers), cache=cached, **options)
        start = time.perf_counter()
        dm.setup()
        setup_s = time.perf_counter() - start
        for workers in args.workers:
            first, rate = time_loader(dm, workers, args.batches)
            rows.append((cached, workers, setup_s, first, rate))

    model_rate = None
    if args.model != "none":
        model_rate = model_train_rate(args.model, args.batch_size, 32, args.model_threads)

    print(f"# {date.today()} | nproc {os.cpu_count()} | {cpu_model()} | torch {torch.__version__}")
    print(f"# command: python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"# {args.root} train split, recipe {args.recipe} augment {augment}")
    print(f"# {args.batches} timed batches of {args.batch_size} after one warm-up batch; main process 1 torch thread")
    print()
    print("| images | workers | setup s | first batch s | img/s | vs model train |")
    print("|---|---|---|---|---|---|")
    for cached, workers, setup_s, first, rate in rows:
        ratio = f"{rate / model_rate:.1f}x" if model_rate else "-"
        kind = "cached (decoded once)" if cached else "JPEG decoded per step"
        print(f"| {kind} | {workers} | {setup_s:.1f} | {first:.2f} | {rate:,.0f} | {ratio} |")
    if model_rate:
        print()
        print(f"Model train rate: {args.model} at 32 px, batch {args.batch_size}, fp32 CPU, {args.model_threads} torch "
              f"thread(s), synthetic tensors: {model_rate:,.0f} img/s.")


if __name__ == "__main__":
    main()
