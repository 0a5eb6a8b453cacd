"""``vitlab-export``: a finished run's network as ONNX, a ``torch.export`` program and safetensors weights.

    vitlab-export logs/train/runs/<date>_<time>                 # -> <run>/export/
    vitlab-export <run>/checkpoints/last.ckpt --out model_dir --formats onnx safetensors

What it writes (the network only: logits from normalised images, the run's eval transform is in
docs/export.md):

- ``model.onnx``: exported through ``torch.export`` (dynamic batch dimension), then run with
  onnxruntime on a batch of random images and compared with PyTorch; the export fails unless every
  logit agrees within ``|onnx - torch| <= ATOL + RTOL * |torch|`` (:data:`ATOL`, :data:`RTOL`).
- ``model.pt2``: the ``torch.export`` program (``torch.export.load(path).module()(images)``).
- ``model.safetensors`` + ``config.yaml`` (the run's resolved config: it rebuilds the network with
  ``vitlab.models.create_model``) + ``classes.json``.
- ``export.json``: what was written, the input shape, and the onnxruntime check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from vitlab.errors import VitlabError

FORMATS = ("onnx", "pt2", "safetensors")
# onnxruntime against PyTorch in float32: same ops, other kernels and summation orders.
ATOL, RTOL = 1e-4, 1e-3


def export_program(net: nn.Module, img_size: int, batch: int = 2) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` (eval mode) on ``(batch, 3, img_size, img_size)``, batch dynamic."""
    example = torch.randn(batch, 3, img_size, img_size)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    try:
        return torch.export.export(net.eval(), (example,), dynamic_shapes=dynamic)
    except Exception:  # noqa: BLE001 - a network whose graph fixes the batch: export that batch size
        return torch.export.export(net.eval(), (example,))


def export_onnx(program: torch.export.ExportedProgram, path: Path, opset: int | None = None) -> None:
    # The exporter and onnxscript's version converter log (with a traceback) an opset they cannot
    # convert to; check_opset reports that in one line instead.
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        onnx_program = torch.onnx.export(program, f=None, input_names=["images"], output_names=["logits"], optimize=False,
                                         opset_version=opset, dynamo=True, external_data=False, verbose=False)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    onnx_program.save(str(path), external_data=False)


def check_onnx(path: Path, net: nn.Module, img_size: int, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Run ``path`` with onnxruntime on random images and compare with ``net``; raises on a mismatch."""
    import onnxruntime

    images = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = net.eval()(images).float()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    got = torch.from_numpy(got)
    if got.shape != expected.shape:
        raise VitlabError(f"export: {path} gives logits of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    diff = (got - expected).abs()
    excess = (diff - (ATOL + RTOL * expected.abs())).max().item()
    result = {"max_abs_diff": diff.max().item(), "atol": ATOL, "rtol": RTOL, "batch": batch, "ok": excess <= 0}
    if not result["ok"]:
        raise VitlabError(
            f"export: onnxruntime disagrees with PyTorch on {path} (max |diff| {diff.max().item():.3g} > "
            f"{ATOL:g} + {RTOL:g} * |logit|); the ONNX file is not usable"
        )
    return result


def save_safetensors(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # Tied or shared tensors are stored once each; safetensors wants contiguous, unshared storage.
    save_file({name: tensor.detach().contiguous().clone() for name, tensor in net.state_dict().items()}, str(path))


def check_opset(path: Path, opset: int | None) -> None:
    """The ONNX file holds the opset asked for (the exporter writes its own when it cannot convert)."""
    if opset is None:
        return
    import onnx

    written = next((i.version for i in onnx.load(str(path), load_external_data=False).opset_import if i.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise VitlabError(f"--opset: the ONNX exporter cannot write opset {opset} (it wrote {written}); ask for {written} or leave --opset out")


def export_network(net: nn.Module, img_size: int, out_dir: Path, formats=FORMATS, opset: int | None = None) -> dict[str, Any]:
    """Write ``net`` in each of ``formats`` into ``out_dir``; returns the summary of ``export.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    summary: dict[str, Any] = {"input": ["batch", 3, img_size, img_size], "files": {}}
    if "onnx" in formats or "pt2" in formats:
        program = export_program(net, img_size)
        if "pt2" in formats:
            torch.export.save(program, str(out_dir / "model.pt2"))
            summary["files"]["pt2"] = "model.pt2"
        if "onnx" in formats:
            export_onnx(program, out_dir / "model.onnx", opset)
            check_opset(out_dir / "model.onnx", opset)
            summary["files"]["onnx"] = "model.onnx"
            summary["onnx_check"] = check_onnx(out_dir / "model.onnx", net, img_size)
    if "safetensors" in formats:
        save_safetensors(net, out_dir / "model.safetensors")
        summary["files"]["safetensors"] = "model.safetensors"
    return summary


def export_run(run: str | Path, out_dir: str | Path | None = None, formats=FORMATS, opset: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Export the network of a run folder or checkpoint (see the module docstring)."""
    from vitlab.api import load_run
    from vitlab.runs import prepare_output_dir

    loaded = load_run(run)
    out = Path(out_dir) if out_dir is not None else loaded.ckpt_path.parent.parent / "export"
    names = ["export.json", "config.yaml", "classes.json"] + [f"model.{f}" for f in formats]
    made = not out.exists()
    prepare_output_dir(out, names, overwrite, key="--out", how="give another --out <folder> or add --overwrite")
    # Everything is written into a folder beside `out` and moved in at the end: a failed export (a
    # full disk, a refused opset) leaves no partial file, and an earlier export stays whole.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out))
    try:
        summary = _write_export(loaded, staging, formats, opset)
        for name in sorted(p.name for p in staging.iterdir()):
            os.replace(staging / name, out / name)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if made:  # a folder this export made holds nothing else
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, OSError):
            raise VitlabError(f"--out: cannot write the export into {out} ({err.strerror}); nothing was changed there") from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return summary | {"out_dir": str(out)}


def _write_export(loaded: Any, out: Path, formats, opset: int | None) -> dict[str, Any]:
    net = loaded.module.net.float().cpu()
    summary = export_network(net, int(loaded.config.data.img_size), out, formats, opset)
    OmegaConf.save(loaded.config, out / "config.yaml")
    (out / "classes.json").write_text(json.dumps(loaded.classes) + "\n")
    summary.update(model=str(loaded.config.model.net.name), checkpoint=str(loaded.ckpt_path),
                   mean=list(loaded.config.data.mean), std=list(loaded.config.data.std))
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitlab-export", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (its best checkpoint) or a .ckpt file")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    args = parser.parse_args(argv)
    try:
        summary = export_run(args.run, args.out, args.formats, args.opset, args.overwrite)
    except VitlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    check = summary.get("onnx_check")
    print(f"exported {summary['model']} to {summary['out_dir']}: {', '.join(summary['files'].values())}")
    if check:
        print(f"onnxruntime vs PyTorch: max |diff| {check['max_abs_diff']:.2e} (allowed {ATOL:g} + {RTOL:g} * |logit|)")


if __name__ == "__main__":
    main()
