"""Train and inference throughput of registered networks on synthetic tensors (no data loading).

    python bench/throughput.py outgrid_7m maxvit_tiny_32:faithful=true --batch 128 --channels-last both
    python bench/throughput.py mini_vit --num-classes 10 --mode train --iters 10

Models are registry names (``vitlab.models.list_models()``), optionally with constructor settings
after a colon (``name:key=value,key=value``), or timm names. Prints one markdown row per (model,
mode, layout): params, MACs per image (torch's flop counter, FLOPs / 2), images/s and ms per step.
A train step is forward + cross-entropy + backward + AdamW step.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import timm
import torch
import yaml
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitlab.models import create_model, list_models


def build(spec: str, num_classes: int, img_size: int) -> nn.Module:
    name, _, settings = spec.partition(":")
    kwargs = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in settings.split(",") if item)}
    if name in list_models():
        return create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    return timm.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)


def macs_per_image(model: nn.Module, img_size: int) -> float:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, img_size, img_size))
    return counter.get_total_flops() / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model: nn.Module, mode: str, batch: int, img_size: int, num_classes: int, channels_last: bool,
               warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per step, the median of ``iters`` timed steps after ``warmup`` untimed ones."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)

    times = []
    for i in range(warmup + iters):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    parser.add_argument("--channels-last", choices=["on", "off", "both"], default="off")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    layouts = {"on": [True], "off": [False], "both": [False, True]}[args.channels_last]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"# {date.today()} | {where} | torch {torch.__version__} | batch {args.batch} | {args.img_size} px | fp32")
    print("| model | params | MACs/img | mode | channels_last | img/s | ms/step |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, args.num_classes, args.img_size)
        params = sum(p.numel() for p in model.parameters())
        macs = macs_per_image(model, args.img_size)
        for mode in modes:
            for channels_last in layouts:
                sec = time_steps(model, mode, args.batch, args.img_size, args.num_classes, channels_last,
                                 args.warmup, args.iters, device)
                print(f"| {name} | {params / 1e6:.2f}M | {macs / 1e6:.0f}M | {mode} | {'on' if channels_last else 'off'} "
                      f"| {args.batch / sec:.1f} | {1000 * sec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
