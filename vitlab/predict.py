"""``vitlab-predict``: score image files (or every image in folders) with a finished run.

    vitlab-predict logs/train/runs/<date>_<time> cat.png dog.jpg        # top-5 per image, printed
    vitlab-predict <run>/checkpoints/last.ckpt photos/ --top-k 3 --out predictions.csv

The run's own config gives the network, the eval transform (resize to its ``data.img_size``,
normalise with its ``data.mean``/``data.std``) and the class names (``data`` on this machine; label
indices otherwise). ``--out`` writes a CSV (``.csv``) or JSON lines (any other suffix) with one row
per image: path, then rank, class index, class name and probability of each of the top-k classes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch

from vitlab.errors import VitlabError
from vitlab.inference import INFERENCE_MODES
from vitlab.runs import check_folder_can_be_made


def predict(run: Any, images: list[Path], top_k: int = 5, batch_size: int = 64, inference: str = "eager") -> list[dict[str, Any]]:
    """Top-k predictions of ``run`` (a :class:`vitlab.api.Run`) for each image file; ``inference`` as
    ``hardware.inference`` (:mod:`vitlab.inference`)."""
    from vitlab.datamodules.images import load_image

    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.stack([run.transform(load_image(path)) for path in chunk])
        probs, indices = run.predict(batch, k=top_k, inference=inference)
        for path, p, i in zip(chunk, probs.tolist(), indices.tolist(), strict=True):
            rows.append({"path": str(path), "top": [
                {"rank": r + 1, "index": c, "class": run.classes[c], "prob": round(q, 6)} for r, (q, c) in enumerate(zip(p, i))
            ]})
    return rows


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """The predictions as CSV or JSON lines, written whole or not at all (:func:`atomic_write`)."""
    from vitlab.checkpoint import atomic_write  # Lightning's file system layer: loaded when there is work

    out.parent.mkdir(parents=True, exist_ok=True)

    def write(path: str) -> None:
        with open(path, "w", newline="") as handle:
            if out.suffix == ".csv":
                writer = csv.writer(handle)
                writer.writerow(["path", "rank", "index", "class", "prob"])
                writer.writerows([row["path"], t["rank"], t["index"], t["class"], t["prob"]] for row in rows for t in row["top"])
            else:
                handle.write("".join(json.dumps(row) + "\n" for row in rows))

    atomic_write(out, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitlab-predict", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (its best checkpoint) or a .ckpt file")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the predictions: .csv, or JSON lines")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="eager",
                        help="eager, fused (BatchNorm folded, an inference-only copy) or compiled (fused + torch.compile)")
    args = parser.parse_args(argv)
    from vitlab.api import load_images, load_run

    try:
        if args.top_k < 1:
            raise VitlabError(f"--top-k: must be >= 1, got {args.top_k}")
        if args.out is not None and args.out.exists() and not args.overwrite:
            raise VitlabError(f"--out: {args.out.resolve()} exists; give another file or --overwrite")
        if args.out is not None:
            check_folder_can_be_made(args.out.parent, "--out", folder_itself=True, noun="folder",
                                     fix="give --out a file in a folder that can be written")
        run = load_run(args.run)
        rows = predict(run, load_images(args.images), args.top_k, inference=args.inference)
    except VitlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for row in rows:
        best = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in row["top"])
        print(f"{row['path']}: {best}")
    if args.out is not None:
        try:
            write_rows(rows, args.out)
        except OSError as err:
            print(f"error: --out: cannot write {args.out} ({err.strerror}); nothing was written", file=sys.stderr)
            sys.exit(2)
        print(f"wrote {len(rows)} predictions to {args.out}")


if __name__ == "__main__":
    main()
