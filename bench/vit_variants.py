"""Train throughput of every clear-vit variant at the ImageNet-100 shape, relative to the baseline.

    python bench/vit_variants.py                       # 256 px, patch 16, batch 32, CPU, 100 classes
    python bench/vit_variants.py --img-size 224 --rounds 5 --device cuda

One markdown table: params (and the difference to the baseline), MACs per image (torch's flop
counter / 2, forward), train images/s (forward + cross-entropy + backward + AdamW step on random
tensors, no data loading) and images/s relative to ``vit``. The attention path says where the
variant runs on SDPA.

Timing is interleaved: after one untimed warm-up step per variant, each round times one step of
every variant in turn, and a variant's figure is its median over the rounds. On a shared machine a
load change then hits all variants alike instead of whichever happened to run at the time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vitlab.bench import count_flops  # noqa: E402
from vitlab.models import create_model  # noqa: E402

VARIANTS = {  # name: (seed README row, attention path)
    "vit": ("3", "SDPA"),
    "vit_pe_dropout": ("1", "SDPA"),
    "vit_diffsim": ("2", "SDPA on (dq, dk, v)"),
    "vit_suppress": ("4", "explicit scores"),
    "vit_rope": ("5", "SDPA, rotated q/k"),
    "vit_diff_entropy": ("6", "SDPA, both maps in one call"),
    "vit_rope_mixed": ("7", "SDPA, rotated q/k"),
    "vit_rope_axial": ("extra", "SDPA, rotated q/k"),
    "vit_alibi": ("extra", "SDPA, additive mask"),
    "vit_cpe": ("extra", "SDPA"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=list(VARIANTS))
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = ["vit"] + [n for n in args.models if n != "vit"]  # the baseline first: the reference

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# {date.today()} | {where} | torch {torch.__version__} | train step, batch {args.batch} | "
        f"{args.img_size} px, patch {args.patch_size} | {args.num_classes} classes | fp32 | "
        f"median of {args.rounds} interleaved rounds after 1 warm-up step"
    )
    print(f"# python bench/vit_variants.py {' '.join(sys.argv[1:])}".rstrip())

    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)
    steps, info = {}, {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name, num_classes=args.num_classes, img_size=args.img_size, patch_size=args.patch_size)
        info[name] = (sum(p.numel() for p in model.parameters()), count_flops(model, args.img_size, args.num_classes)[0] / 2)
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt) -> None:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up
        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)

    print(
        "| variant | seed row | params | vs baseline | MACs/img | attention path | train img/s | ms/step "
        "| rel. to vit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base_params, base_rate = info["vit"][0], None
    for name in names:
        sec = sorted(times[name])[len(times[name]) // 2]
        rate = args.batch / sec
        base_rate = base_rate or rate
        params, macs = info[name]
        row, path = VARIANTS.get(name, ("-", "-"))
        print(
            f"| {name} | {row} | {params:,} | {params - base_params:+,} | {macs / 1e9:.2f}G | {path} | {rate:.2f} "
            f"| {1000 * sec:.0f} | {rate / base_rate:.2f} |"
        )


if __name__ == "__main__":
    main()
