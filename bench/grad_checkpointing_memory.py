"""Peak memory of one training step with and without gradient checkpointing (CPU).

    OMP_NUM_THREADS=1 python bench/grad_checkpointing_memory.py [--batch 128] [--models vit mini_vit ...]

Each (model, checkpointing) pair runs in its own process, so the peak resident set size
(``ru_maxrss``) belongs to that step alone: reported as the peak over the RSS after building the
network. Beside it the bytes autograd saved for the backward pass (``saved_tensors_hooks``), the
activation memory that checkpointing trades for a second forward. The order alternates per model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {  # 32 px CIFAR-sized inputs; vit at 32 px is the B0 backbone on an 8x8 grid
    "vit": dict(img_size=32),
    "mini_vit": dict(),
    "outgrid_7m": dict(),
    "qavit_tiny_32": dict(),
}


def one(name: str, checkpointing: bool, batch: int) -> dict:
    import torch

    from vitlab.models import create_model

    torch.manual_seed(0)
    net = create_model(name, **SIZES[name]).train()
    net.set_grad_checkpointing(checkpointing)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, net.num_classes, (batch,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": name, "grad_checkpointing": checkpointing, "batch": batch, "peak_rss_mib": (peak - base) / 1024,
            "saved_for_backward_mib": saved / 2**20, "step_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=list(SIZES))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "1", args.batch)))
        return
    print(f"load: {os.getloadavg()}")
    print("| model | batch | grad ckpt | peak RSS over the built net (MiB) | saved for backward (MiB) | step (s) |")
    print("|---|---|---|---|---|---|")
    for i, name in enumerate(args.models):
        for flag in (("0", "1") if i % 2 == 0 else ("1", "0")):
            out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", name, flag],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {name} | {r['batch']} | {'on' if r['grad_checkpointing'] else 'off'} | {r['peak_rss_mib']:.0f} "
                  f"| {r['saved_for_backward_mib']:.0f} | {r['step_s']:.2f} |", flush=True)
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
