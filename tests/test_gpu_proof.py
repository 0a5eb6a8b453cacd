"""bench/gpu_proof.sh: its --tiny CPU mode end to end (slow), and its pieces (fast)."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_proof", ROOT / "bench" / "gpu_proof.py")
gpu_proof = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_proof)


def test_packed_jpegs_unpack_byte_for_byte(tmp_path):
    folder = gpu_proof.make_tiny_folder(tmp_path / "folder", per_class=2)
    info = gpu_proof.pack_data(folder, tmp_path / "pack.npz")
    assert info["images"] == 2 * 10 * 2
    back = gpu_proof.unpack_data(tmp_path / "pack.npz", tmp_path / "back")
    originals = sorted(p.relative_to(folder) for p in folder.rglob("*.jpg"))
    assert originals == sorted(p.relative_to(back) for p in back.rglob("*.jpg")) and len(originals) == 40
    assert all((folder / p).read_bytes() == (back / p).read_bytes() for p in originals)


# fp16 with loss scaling in the default run; bf16 (traced again, ~20 s on a loaded CPU) with the slow tests.
@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=pytest.mark.slow), "fp16"])
def test_a_compiled_step_with_the_flash_backend_asserted(precision, one_thread):
    import torch

    from vitlab.layers.attention import sdpa_backend
    from vitlab.models import create_model

    row = gpu_proof._compiled_steps("mini_vit", precision, False, True, 2, 2, torch.device("cpu"), "eager",
                                    create_model, sdpa_backend, attn_drop_rate=0.0)  # CPU flash: no dropout
    assert len(row["losses"]) == 2 and all(np.isfinite(row["losses"]))
    assert any("flash" in name for name in row["flash_ops"])
    assert (row["grad_scale"] is not None) == (precision == "fp16")  # loss scaling in fp16 only


def test_summary_names_every_part():
    text = gpu_proof.summary({"started": "now", "device": "cpu", "torch": "x", "tiny": True,
                              "mini_vit": {"status": "ok", "test_top1_per_epoch": {1: 12.5, 5: 60.0}}})
    assert "(a) compiled steps" in text and "(b) vitlab.bench" in text and "| 5 | 60.00 | 59.4 |" in text


@pytest.mark.slow
def test_tiny_mode_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "proof"
    done = subprocess.run(["bash", "bench/gpu_proof.sh", str(out), "--tiny"], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mini_vit"]["status"] == results["steps"]["status"] == results["bench"]["status"] == "ok"
    assert results["inference"]["status"] == "ok"
    assert sorted(int(e) for e in results["mini_vit"]["test_top1_per_epoch"]) == [1, 2]
    assert results["mini_vit"]["metrics"]["protocol"] == "seed"
    rows = results["steps"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {(m, p) for m in gpu_proof.TINY_MODELS for p in ("bf16", "fp16")}
    assert any(r["channels_last"] for r in rows) and any(r.get("flash_ops") for r in rows)
    assert all(r["status"] == "ok" for r in rows)
    assert "mini_vit" in (out / "bench.md").read_text() and (out / "summary.md").is_file() and (out / "log.txt").is_file()


def test_inference_part_times_every_mode_and_each_agrees_with_eager(one_thread):
    result = gpu_proof.inference_modes(tiny=True)
    assert result["modes"] == ["eager", "fused"]  # compiled needs inductor: GPU only
    assert [r["model"] for r in result["rows"]] == ["mini_vit", "deit_tiny", "resnet18"]
    for row in result["rows"]:
        assert row["eager_img_s"] > 0 and row["fused_img_s"] > 0
        assert row["eager_max_abs_diff"] == 0.0 and row["fused_max_abs_diff"] < 1e-4
    text = gpu_proof.summary({"started": "now", "device": "cpu", "torch": "x", "tiny": True,
                              "inference": {"status": "ok", **result}})
    assert "(d) inference modes" in text and "| baseline | resnet18 | 2 |" in text
