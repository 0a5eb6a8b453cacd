"""Time this checkout's networks against the same networks from another checkout of vitlab, in one
process, the steps of every side alternating round by round.

    git worktree add ../vitlab-ref <rev>            # the reference, e.g. the main a change started from
    python bench/compare_checkouts.py --reference ../vitlab-ref mini_vit --batch-size 128
    python bench/compare_checkouts.py --reference ../vitlab-ref outgrid_7m --batch-size 64 \\
        --train ref new new+compile --infer ref new new+fused new+compiled

Why one process: on a shared machine the load changes from minute to minute, so two separate runs
can differ by more than the change being measured. Here each timed round runs one step of every side
in turn (:func:`vitlab.measure.time_in_turn`), and the reference checkout's package is imported
under its own module objects beside this one.

Sides: ``ref`` / ``new`` is the network of that checkout, in eager mode. ``+compile`` wraps it in
``torch.compile`` (both checkouts offer ``model.compile``). For inference, ``new+<mode>`` uses
:func:`vitlab.inference.prepare_for_inference` of this checkout with that mode. Both networks get the
same weights (the reference's state dict loaded into the new one, strictly) and the same batch; the
script checks that their eval logits agree before timing anything, so a speed-up cannot come from
computing something else.

A train step is forward + cross-entropy + backward + optimizer step, the optimizer built by each
checkout's own ``vitlab.optim.build_optimizer`` with the default recipe settings; an inference step is a forward under
``inference_mode``. Prints a markdown table (img/s = batch / median seconds per step, and each side's
ratio to ``ref``) with the command, machine, threads, date and load average.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # "new" is the checkout this script lies in, whatever is installed


def _vitlab_modules() -> dict[str, ModuleType]:
    return {name: mod for name, mod in sys.modules.items() if name == "vitlab" or name.startswith("vitlab.")}


def import_checkout(root: Path) -> dict[str, ModuleType]:
    """The ``vitlab`` modules of the checkout at ``root`` by name, imported beside the current
    ``vitlab``: the current package's modules are set aside while the other one imports, then put back."""
    current = _vitlab_modules()
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        models = importlib.import_module("vitlab.models")
        importlib.import_module("vitlab.layers.attention")
        importlib.import_module("vitlab.optim")
        if not Path(models.__file__).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"--reference {root}: imported vitlab from {models.__file__}, not from that checkout")
        other = _vitlab_modules()
    finally:
        sys.path.remove(str(root))
        for name in _vitlab_modules():
            del sys.modules[name]
        sys.modules.update(current)
        importlib.invalidate_caches()
    return other


def parse_spec(spec: str) -> tuple[str, dict]:
    from vitlab.bench import parse_spec as parse

    return parse(spec)


class Side:
    """One column: a network of one checkout with one switch, and its two step closures."""

    def __init__(self, label: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool,
                 optim: ModuleType, inference_mode: str | None = None):
        self.label = label
        self.net = net
        self.x, self.y = x, y
        self.model = torch.compile(net) if compiled else net
        # Each checkout's own optimizer factory with the recipe's default optimizer settings: the
        # step as that checkout's training takes it.
        self.optimizer = optim.build_optimizer(net, optim.OptimizerConfig())
        self.inference_mode = inference_mode
        self._infer_model = None

    def train(self) -> None:
        self.net.train()
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer(self) -> None:
        if self._infer_model is None:
            if self.inference_mode is not None:
                from vitlab.inference import prepare_for_inference

                self._infer_model = prepare_for_inference(copy.deepcopy(self.net), self.inference_mode)
            else:
                self._infer_model = self.model
            self.net.eval()
        self.net.eval()
        with torch.inference_mode():
            self._infer_model(self.x)


def build_sides(spec: str, tokens: list[str], ref: dict[str, ModuleType], batch: int, img_size: int | None,
                channels_last: bool) -> list[Side]:
    from vitlab import bench
    from vitlab import optim as new_optim
    from vitlab.models import create_model

    ref_models = ref["vitlab.models"]
    name, kwargs = parse_spec(spec)
    if img_size is not None:
        kwargs["img_size"] = img_size
    torch.manual_seed(0)
    ref_net = ref_models.create_model(name, **kwargs)
    new_net = create_model(name, **kwargs)
    new_net.load_state_dict(ref_net.state_dict(), strict=True)
    size = bench.dataset_input(name, new_net, kwargs)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=layout)
    y = torch.randint(0, int(new_net.num_classes), (batch,), generator=generator)
    with torch.inference_mode():
        a, b = ref_net.eval()(x[:4]), new_net.eval()(x[:4])
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=lambda m: f"{spec}: the two checkouts' logits differ\n{m}")
    sides = []
    for token in tokens:
        checkout, _, switch = token.partition("+")
        if checkout not in ("ref", "new"):
            raise SystemExit(f"side {token!r}: start with ref or new")
        source = ref_net if checkout == "ref" else new_net
        net = copy.deepcopy(source).to(memory_format=layout)
        compiled = switch == "compile"
        mode = switch if switch and not compiled else None
        if mode is not None and checkout == "ref":
            raise SystemExit(f"side {token!r}: inference modes are this checkout's (new+{switch})")
        sides.append(Side(token, net, x, y, compiled, ref["vitlab.optim"] if checkout == "ref" else new_optim, mode))
    return sides


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="registry names with optional :key=value settings")
    parser.add_argument("--reference", type=Path, required=True, help="root of the other vitlab checkout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--channels-last", action="store_true", help="inputs and weights channels-last on every side")
    parser.add_argument("--train", nargs="*", default=["ref", "new"], help="train-step sides (default: ref new)")
    parser.add_argument("--infer", nargs="*", default=["ref", "new"], help="inference sides (default: ref new)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vitlab import measure

    ref = import_checkout(args.reference)
    started = datetime.now(timezone.utc)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {started:%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"nproc {os.cpu_count()}, load average before {load_average()}, reference {args.reference.resolve()}")
    print("\n| model | batch | mode | side | img/s | ms/step | vs ref |\n|---|---|---|---|---|---|---|")
    for spec in args.models:
        for mode, tokens in (("train", args.train), ("infer", args.infer)):
            if not tokens:
                continue
            sides = build_sides(spec, tokens, ref, args.batch_size, args.img_size, args.channels_last)
            seconds = measure.time_in_turn([getattr(s, mode) for s in sides], args.warmup, args.iters)
            ref_sec = dict(zip(tokens, seconds)).get("ref")
            for side, sec in zip(sides, seconds):
                ratio = f"{ref_sec / sec:.2f}x" if ref_sec else "-"
                print(f"| {spec} | {args.batch_size} | {mode} | {side.label} | {args.batch_size / sec:.1f} | "
                      f"{1000 * sec:.0f} | {ratio} |", flush=True)
    print(f"\n# load average after {load_average()}")


if __name__ == "__main__":
    main()
