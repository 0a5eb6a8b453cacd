"""Cost of the set-up check of image files (``vitlab.datamodules.images.check_image_files``).

    python bench/image_check_cost.py --root ../shared/data/cifar10-jpg
    python bench/image_check_cost.py --root ../shared/data/cifar10-jpg --decode   # + a full decode, for scale

Times the check of every file of ``<root>/train`` and ``<root>/test`` twice with a fresh cache
folder: the first run opens every file (header and end marker), the second finds the stamps and only
lists and stats the files. ``--decode`` also times decoding every training image once
(``load_image``), which is what one epoch of a loader pays.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torchvision.datasets import ImageFolder

from vitlab.datamodules.images import check_image_files, load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cifar10-jpg")
    parser.add_argument("--decode", action="store_true")
    args = parser.parse_args()
    splits = {name: [path for path, _ in ImageFolder(f"{args.root}/{name}").samples] for name in ("train", "test")}
    with tempfile.TemporaryDirectory() as cache:
        for attempt in ("first run", "second run"):
            for name, paths in splits.items():
                started = time.perf_counter()
                check_image_files(paths, cache_dir=cache, stamp=f"Bench-{name}")
                took = time.perf_counter() - started
                print(f"{attempt}: {name} split, {len(paths)} files: {took:.2f} s ({took / len(paths) * 1e6:.0f} us/file)")
    if args.decode:
        started = time.perf_counter()
        for path in splits["train"]:
            load_image(path)
        took = time.perf_counter() - started
        print(f"full decode: train split, {len(splits['train'])} files: {took:.2f} s ({took / len(splits['train']) * 1e6:.0f} us/file)")


if __name__ == "__main__":
    main()
