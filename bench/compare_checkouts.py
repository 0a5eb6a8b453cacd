"""Time this checkout's networks against the same networks from another checkout of vitlab, in one
run, the steps of every side alternating round by round.

    git worktree add ../vitlab-ref <rev>            # the reference, e.g. the main a change started from
    python bench/compare_checkouts.py --reference ../vitlab-ref mini_vit --batch-size 128
    python bench/compare_checkouts.py --reference ../vitlab-ref outgrid_7m --batch-size 64 --channels-last \\
        --train ref new new+compile --infer ref new new+fused new+compiled

Why one run: on a shared machine the load changes from minute to minute, so two separate runs can
differ by more than the change being measured. Each side is a worker process of its own checkout
(so process-wide settings such as the allocator are each checkout's own), started once and kept;
this process sends each worker one step at a time and times it, one step of every side per round,
the order reversed every other round (:func:`vitlab.measure.time_in_turn`).

Sides: ``ref`` / ``new`` is the network of that checkout, in eager mode. ``+compile`` wraps it in
``torch.compile`` (both checkouts offer ``hardware.compile``). For inference, ``new+<mode>`` uses
:func:`vitlab.inference.prepare_for_inference` of this checkout with that mode. Every worker sets up
its process as that checkout's entry points do (``vitlab.utils.reuse_freed_memory`` where the
checkout has it, unless ``--system-malloc``). All sides get the same weights (the reference's, loaded
strictly) and the same batch, and their eval logits must agree before anything is timed, so a
speed-up cannot come from computing something else.

A train step is forward + cross-entropy + backward + optimizer step, the optimizer built by each
checkout's own ``vitlab.optim.build_optimizer`` with the default recipe settings; an inference step
is a forward under ``inference_mode``. Prints a markdown table (img/s = batch / median seconds per
step, and each side's ratio to ``ref``) with the command, machine, threads, date and load average.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- worker
def serve(args: argparse.Namespace) -> None:
    """One side: build the network from ``args.checkout``, then run one step per line on stdin."""
    sys.path.insert(0, str(args.checkout))
    import torch
    import torch.nn.functional as F

    import vitlab
    from vitlab import bench, optim
    from vitlab.models import create_model

    if not Path(vitlab.__file__).resolve().is_relative_to(Path(args.checkout).resolve()):
        raise SystemExit(f"{args.checkout}: imported vitlab from {vitlab.__file__}, not from that checkout")
    reuse = getattr(importlib.import_module("vitlab.utils"), "reuse_freed_memory", None)  # absent in older checkouts
    if reuse is not None and not args.system_malloc:
        reuse()
    torch.set_num_threads(args.threads)
    name, kwargs = bench.parse_spec(args.spec)
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    torch.manual_seed(0)
    net = create_model(name, **kwargs)
    weights = Path(args.weights)
    if weights.is_file():
        net.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    else:
        torch.save(net.state_dict(), weights)
    size = bench.dataset_input(name, net, kwargs)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=generator).contiguous(memory_format=layout)
    y = torch.randint(0, int(net.num_classes), (args.batch_size,), generator=generator)
    net = net.to(memory_format=layout)
    switch = args.serve.partition("+")[2]
    with torch.inference_mode():
        torch.save(net.eval()(x[:4]), args.logits)
    model = torch.compile(net) if switch == "compile" else net
    optimizer = optim.build_optimizer(net, optim.OptimizerConfig())
    runner = model
    if args.mode == "infer" and switch not in ("", "compile"):
        from vitlab.inference import prepare_for_inference

        runner = prepare_for_inference(net, switch)

    def step() -> None:
        if args.mode == "train":
            net.train()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            net.eval()
            with torch.inference_mode():
                runner(x)

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        step()
        print("done", flush=True)


# ----------------------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, side: str, checkout: Path, spec: str, mode: str, workdir: Path, args: argparse.Namespace):
        self.side = side
        self.logits = workdir / f"{side}.logits.pt"
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", side, "--checkout", str(checkout),
                   "--spec", spec, "--mode", mode, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--weights", str(workdir / "weights.pt"), "--logits", str(self.logits)]
        command += ["--img-size", str(args.img_size)] if args.img_size else []
        command += ["--channels-last"] if args.channels_last else []
        command += ["--system-malloc"] if args.system_malloc else []
        # The worker imports its own checkout: nothing installed or inherited may take precedence.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit(f"side {side}: the worker did not start (see its error above)")

    def step(self) -> None:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "done":
            raise SystemExit(f"side {self.side}: the worker stopped (see its error above)")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="registry names with optional :key=value settings")
    parser.add_argument("--reference", type=Path, help="root of the other vitlab checkout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--channels-last", action="store_true", help="inputs and weights channels-last on every side")
    parser.add_argument("--train", nargs="*", default=["ref", "new"], help="train-step sides (default: ref new)")
    parser.add_argument("--infer", nargs="*", default=["ref", "new"], help="inference sides (default: ref new)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker (default 1)")
    parser.add_argument("--system-malloc", action="store_true", help="no worker changes glibc's allocator settings")
    # A worker's own arguments (started by the driver, not by hand).
    for flag in ("--serve", "--checkout", "--spec", "--mode", "--weights", "--logits"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return
    if args.reference is None or not args.models:
        parser.error("give --reference and at least one model")
    for token in args.train + args.infer:
        checkout, _, switch = token.partition("+")
        if checkout not in ("ref", "new") or (checkout == "ref" and switch not in ("", "compile")):
            raise SystemExit(f"side {token!r}: ref, ref+compile, new, new+compile or new+<inference mode>")

    sys.path.insert(0, str(HERE))
    import torch

    from vitlab import measure

    started = datetime.now(timezone.utc)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {started:%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {args.threads} threads per worker, "
          f"nproc {os.cpu_count()}, load average before {load_average()}, reference {args.reference.resolve()}, "
          f"malloc {'system' if args.system_malloc else 'as each checkout sets it'}")
    print("\n| model | batch | mode | side | img/s | ms/step | vs ref |\n|---|---|---|---|---|---|---|", flush=True)
    for spec in args.models:
        for mode, tokens in (("train", args.train), ("infer", args.infer)):
            if not tokens:
                continue
            with tempfile.TemporaryDirectory(prefix="compare_") as tmp:
                workdir = Path(tmp)
                # The reference's worker first: it writes the weights every other side loads.
                order = sorted(tokens, key=lambda t: not t.startswith("ref"))
                if not order[0].startswith("ref"):
                    raise SystemExit("give a ref side: every side loads the reference's weights")
                workers = {}
                try:
                    for token in order:
                        workers[token] = Worker(token, args.reference if token.startswith("ref") else HERE, spec, mode,
                                                workdir, args)
                    first = torch.load(workers[order[0]].logits)
                    for token in order[1:]:
                        torch.testing.assert_close(torch.load(workers[token].logits), first, atol=1e-4, rtol=1e-4,
                                                   msg=lambda m, t=token: f"{spec}: side {t}'s logits differ from ref's\n{m}")
                    seconds = measure.time_in_turn([workers[t].step for t in tokens], args.warmup, args.iters)
                finally:
                    for worker in workers.values():
                        worker.close()
            ref_sec = dict(zip(tokens, seconds)).get("ref")
            for token, sec in zip(tokens, seconds):
                ratio = f"{ref_sec / sec:.2f}x" if ref_sec else "-"
                print(f"| {spec} | {args.batch_size} | {mode} | {token} | {args.batch_size / sec:.1f} | "
                      f"{1000 * sec:.0f} | {ratio} |", flush=True)
    print(f"\n# load average after {load_average()}")
    print(json.dumps({"finished": f"{datetime.now(timezone.utc):%H:%M} UTC"}))


if __name__ == "__main__":
    main()
