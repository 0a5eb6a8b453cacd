"""vitlab-export (ONNX checked with onnxruntime, torch.export .pt2, safetensors) and vitlab-predict."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from conftest import SMOKE, compose_config
from vitlab.export import ATOL, RTOL, export_network
from vitlab.models import create_model

pytest.importorskip("onnxruntime")

# One tiny network per family; its weights are drawn at random (a zero-initialised head would make
# every logit 0 and the comparison empty).
FAMILIES = {
    "mini_vit": ("mini_vit", dict(embed_dim=32, depth=1, num_heads=2)),
    "vit": ("vit_rope_mixed", dict(img_size=32, embed_dim=32, depth=1, num_heads=2)),
    "outgrid": ("outgrid_7m", dict(stem_dim=16, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                   outlook_heads=(1, 1, 2, 2))),
    "qavit": ("qavit_tiny_32", dict(embed_dim=32, depth=1, num_heads=2, num_groups=4, bank_size=4, window_size=3)),
    "baseline": ("resnet18", dict()),
}


# OutGrid's and QAViT's exports take the longest (tens of seconds on 2 cores): they run with -m slow.
HEAVY_EXPORTS = {"outgrid", "qavit"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY_EXPORTS else f for f in FAMILIES])
def test_every_family_exports_and_onnxruntime_matches_pytorch(family, tmp_path, one_thread):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        for param in net.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.2)
    summary = export_network(net, 32, tmp_path, formats=("onnx", "pt2"))
    check = summary["onnx_check"]
    assert check["ok"] and check["max_abs_diff"] <= ATOL and (check["atol"], check["rtol"]) == (ATOL, RTOL)
    images = torch.randn(3, 3, 32, 32)  # another batch size than the export's: the batch is dynamic
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        expected = net(images)
        assert expected.std() > 0
        torch.testing.assert_close(program(images), expected, atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from vitlab.training import train

    out = tmp_path_factory.mktemp("run")
    cfg = compose_config([*SMOKE, "model=mini_vit", "model.net.depth=1", "recipe.epochs=1", "logger=csv",
                          "~callbacks.attention_dump", "~callbacks.flops", "~callbacks.throughput"], output_dir=out)
    train(cfg)
    return out


def test_export_cli_writes_every_format_with_the_config(finished_run, tmp_path, capsys):
    from safetensors.torch import load_file

    from vitlab.api import load_run
    from vitlab.export import main

    main([str(finished_run), "--out", str(tmp_path / "export")])
    out = tmp_path / "export"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.pt2", "model.safetensors", "config.yaml",
                                               "classes.json", "export.json"}
    summary = json.loads((out / "export.json").read_text())
    assert summary["model"] == "mini_vit" and summary["onnx_check"]["ok"]
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    run = load_run(finished_run)
    weights = load_file(str(out / "model.safetensors"))
    net = create_model("mini_vit", num_classes=10, depth=1)
    net.load_state_dict(weights)
    torch.testing.assert_close(net.state_dict()["head.weight"], run.module.net.state_dict()["head.weight"])
    assert json.loads((out / "classes.json").read_text()) == run.classes
    with pytest.raises(SystemExit) as exit_info:  # an earlier export is never replaced silently
        main([str(finished_run), "--out", str(out), "--formats", "safetensors"])
    assert exit_info.value.code == 2 and "already holds" in capsys.readouterr().err


def _export_error(capsys, *args) -> str:
    from vitlab.export import main

    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    return line


def test_export_refusals_are_one_line_and_leave_an_earlier_export_whole(finished_run, tmp_path, capsys, monkeypatch):
    import vitlab.export as export

    out = tmp_path / "export"
    export.main([str(finished_run), "--out", str(out), "--formats", "safetensors"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # An opset the exporter cannot write (it wrote its own before): refused, nothing changed.
    line = _export_error(capsys, finished_run, "--out", out, "--formats", "onnx", "--opset", "1", "--overwrite")
    assert line == "error: --opset: the ONNX exporter cannot write opset 1 (it wrote 18); ask for 18 or leave --opset out"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A full disk while writing: one line, the earlier export whole, no partial file.
    def full_disk(net, path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_safetensors", full_disk)
    line = _export_error(capsys, finished_run, "--out", out, "--formats", "safetensors", "--overwrite")
    assert line == f"error: --out: cannot write the export into {out} (No space left on device); nothing was changed there"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A folder that cannot be made; the flags are named as they are spelled.
    (tmp_path / "a_file").write_text("")
    line = _export_error(capsys, finished_run, "--out", tmp_path / "a_file" / "export")
    assert line.startswith("error: --out: cannot create ") and line.endswith("give --out a folder that can be written")
    line = _export_error(capsys, finished_run, "--out", out, "--formats", "safetensors")
    assert line.endswith("already holds export.json; give another --out <folder> or add --overwrite")
    # A refused export into a new folder leaves no folder.
    line = _export_error(capsys, finished_run, "--out", tmp_path / "new", "--formats", "onnx", "--opset", "1")
    assert line.startswith("error: --opset: ") and not (tmp_path / "new").exists()


def test_predict_scores_files_and_folders(finished_run, tmp_path, capsys):
    from vitlab.predict import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 40), colour).save(folder / f"img{i}.png")  # another size: the transform resizes
    single = tmp_path / "one.jpg"
    Image.new("RGB", (32, 32), (0, 255, 0)).save(single)
    main([str(finished_run), str(single), str(folder), "--top-k", "3", "--out", str(tmp_path / "pred.csv")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 4 and printed[0].startswith(str(single))
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    assert len(rows) == 9 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    probs = [float(r["prob"]) for r in rows[:3]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert rows[0]["class"] and not rows[0]["class"].isdigit()  # the synthetic task names its classes
    with pytest.raises(SystemExit):
        main([str(finished_run), str(tmp_path / "missing.png")])
    assert "images: no file or folder" in capsys.readouterr().err


def test_predict_out_that_cannot_be_written_is_one_line_before_scoring(finished_run, tmp_path, capsys):
    from vitlab.predict import main

    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main([str(finished_run), str(image), "--out", str(tmp_path / "a_file" / "p.csv")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == "", captured
    (line,) = captured.err.strip().splitlines()
    assert line == (f"error: --out: cannot create the folder {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file, not a folder; "
                    "give --out a file in a folder that can be written")
