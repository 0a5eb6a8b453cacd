"""Eager against torch.compile, train steps timed in turn in one process (vitlab.measure.time_in_turn),
and what the compiled side did: graphs, graph breaks and recompilations (torch._dynamo's counters).

    OMP_NUM_THREADS=2 python bench/compile_vs_eager.py mini_vit vit outgrid_7m --batch-size 64

Compilation falls in the warm-up rounds; its wall time is printed apart. The figures go to
bench/RESULTS.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch._dynamo

from vitlab import measure
from vitlab.bench import Switches, build_subject, device_name, make_steps


def compare(name: str, batch_size: int, warmup: int, iters: int, device: torch.device) -> dict[str, float]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_subject, compiled_subject = build_subject(name), build_subject(name)
    compiled_subject.net.load_state_dict(eager_subject.net.state_dict())
    eager = make_steps(eager_subject, Switches(device, batch_size=batch_size))["train"]
    compiled = make_steps(compiled_subject, Switches(device, batch_size=batch_size, compile=True))["train"]
    watch = measure.Stopwatch(device)
    watch.start()
    compiled()  # compiles forward and backward
    compile_s = watch.stop()
    eager_s, compiled_s = measure.time_in_turn([eager, compiled], warmup, iters, device)
    stats = torch._dynamo.utils.counters
    return {
        "compile_s": compile_s,
        "eager_ms": 1000 * eager_s,
        "compiled_ms": 1000 * compiled_s,
        "speedup": eager_s / compiled_s,
        "graphs": stats["stats"]["unique_graphs"],
        "graph_breaks": sum(stats["graph_break"].values()),
        "recompiles": stats["recompiles"].get("total", 0) if "recompiles" in stats else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {device_name(device)} | "
          f"torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"load {os.getloadavg()[0]:.2f} | batch {args.batch_size} | median of {args.iters} after {args.warmup}")
    print("| model | eager ms/step | compiled ms/step | compiled speed-up | compile s | graphs | graph breaks | recompiles |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = compare(name, args.batch_size, args.warmup, args.iters, device)
        print(f"| {name} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} | {r['speedup']:.2f}x | {r['compile_s']:.0f} | "
              f"{r['graphs']} | {r['graph_breaks']} | {r['recompiles']} |")
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
