"""What the reliability features cost: the NaN guard's per-step check and the atomic checkpoint write.

    python bench/reliability_overhead.py --model mini_vit --batch 128 --threads 2
    python bench/reliability_overhead.py --model outgrid_7m --num-classes 100 --batch 64 --device cuda

Prints, for one network: a training step (forward + backward + AdamW) at the given batch, the guard's
gradient check (total norm + one host sync) as a share of it, and the time to write a full checkpoint
(weights + AdamW state) with ``torch.save`` alone and with ``vitlab.checkpoint.atomic_write``
(temporary file + fsync + rename). Medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitlab.checkpoint import atomic_write  # noqa: E402
from vitlab.measure import time_in_turn  # noqa: E402
from vitlab.models import create_model  # noqa: E402


def _median_s(fn, repeats: int, device: torch.device) -> float:
    return time_in_turn([fn], warmup=0, iters=repeats, device=device)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini_vit")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    net = create_model(args.model, num_classes=args.num_classes).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()

    def guard_check() -> None:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()

    step()  # warm-up, and gradients for the check
    step_s = _median_s(step, args.repeats, device)
    check_s = _median_s(guard_check, args.repeats * 5, device)

    checkpoint = {"state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "last.ckpt"
        plain_s = _median_s(lambda: torch.save(checkpoint, target), args.repeats, device)
        atomic_s = _median_s(lambda: atomic_write(target, lambda tmp: torch.save(checkpoint, tmp)), args.repeats, device)
        size_mb = target.stat().st_size / 2**20

    params = sum(p.numel() for p in net.parameters())
    print(f"{args.model}: {params:,} params, batch {args.batch}, {device.type}"
          f"{f', {torch.get_num_threads()} threads' if device.type == 'cpu' else ''}")
    print(f"  training step        {step_s * 1e3:9.2f} ms")
    print(f"  NaN guard check      {check_s * 1e3:9.3f} ms  ({100 * check_s / step_s:.2f} % of a step)")
    print(f"  checkpoint {size_mb:6.1f} MB  torch.save {plain_s * 1e3:8.1f} ms | atomic (tmp + fsync + rename) "
          f"{atomic_s * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
