"""Where a train or inference step spends its time: torch.profiler's ops by self CPU time.

    python bench/profile_step.py outgrid_7m --batch-size 64 --channels-last --mode train --threads 1
    python bench/profile_step.py qavit_tiny --batch-size 16 --mode infer --inference fused --top 15

The steps :mod:`vitlab.bench` times (``vitlab.bench.make_steps``: random tensors; a train step is
forward + cross-entropy + backward + AdamW). ``--inference`` profiles the copy
:func:`vitlab.inference.prepare_for_inference` makes. Prints the top ops with their share of the step, which is what bench/RESULTS.md quotes as
"what remains"; shares hold up on a loaded machine better than absolute times do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vitlab

from vitlab import bench  # noqa: E402
from vitlab.inference import INFERENCE_MODES  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registry name with optional :key=value settings")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="eager")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps, after one warm-up step")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    subject = bench.build_subject(args.model, args.img_size)
    # The very steps vitlab.bench times (the inference copy is made in the warm-up step below).
    switches = bench.Switches(torch.device("cpu"), channels_last=args.channels_last, batch_size=args.batch_size,
                              inference=args.inference)
    step = bench.make_steps(subject, switches)[args.mode]

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"# {args.model} {args.mode} ({args.inference}), batch {args.batch_size}, {torch.get_num_threads()} threads: "
          f"{total / 1e3 / args.steps:.0f} ms of self CPU time per step")
    print("| op | share | ms/step | calls/step |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
              f"{e.count // args.steps} |")


if __name__ == "__main__":
    main()
