"""Every documented command line of vitlab-evaluate, -analyze, -report, -bench, -predict and -export
in README.md and docs/ runs as written, in a folder laid out as a reader's would be after a short
training run and a sweep, and writes what the docs say it writes. A reader's placeholders
(``<run folder>``, ``multirun/<date>/<time>``, ...) become that folder's real paths, optional
``[...]`` parts run with their brackets removed, and a few settings are appended where a line would
otherwise run for minutes. A line that cannot run here is named in NEEDS_CUDA with the reason; a new
documented line is run, or this module fails until it is listed there.

All of it is ``slow``: every line starts its own interpreter, as the reader's shell would."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT
from test_datamodules import write_cifar
from test_docs_commands import DOCS, DocCommand, documented_commands
from test_evaluate import WNIDS, write_corruption_fixture
from test_extending_docs import blocks, section

pytestmark = pytest.mark.slow

PROGRAMS = ("evaluate", "analyze", "report", "bench", "predict", "export")

# Lines that need a CUDA GPU: where there is none they are skipped with this reason, where there is
# one they run like every other line.
NEEDS_CUDA = {
    "vitlab-evaluate ckpt_path=... data=cifar100 hardware=gpu batch_size=512":
        "hardware=gpu asks for a CUDA GPU",
    "vitlab-bench vit --precision bf16 --channels-last --compile":
        "documented for a GPU (bf16 autocast and torch.compile on CUDA)",
}

# A run of a few seconds: one epoch of two 8-image batches on the CPU, one val and one test batch.
TINY_TRAINING = ["hardware=cpu", "hardware.num_workers=0", "recipe.epochs=1", "recipe.batch_size=8",
                 "recipe.repeated_aug=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.kind=tqdm"]
# The sweep's two runs: whole epochs of small synthetic splits (vitlab-report leaves out a run with
# trainer.limit_train_batches as a debug run).
TINY_SWEEP = ["hardware.num_workers=0", "data.train_size=64", "data.val_size=16", "data.test_size=16",
              "recipe.batch_size=16", "recipe.repeated_aug=1", "trainer.num_sanity_val_steps=0",
              "callbacks.progress_bar.kind=tqdm"]
# One warm-up and one timed step of two 32 px images: the numbers mean nothing, the code path is the
# documented one.
TINY_BENCH = ["--batch-size", "2", "--img-size", "32", "--warmup", "1", "--iters", "1"]
# A reader's own image files, of several formats and sizes.
PHOTOS = {"red.jpg": (200, 30, 30), "green.png": (30, 200, 30), "blue.jpeg": (30, 30, 200)}
# CIFAR-100's training split with its default validation part (5000 images) and 60 images left to train on.
CIFAR100_TRAIN, CIFAR100_TEST = 5060, 20


@dataclass(frozen=True)
class ReaderWorld:
    """The files a reader has when following the docs: ``folder`` holds ``logs/train/runs/<stamp>/``
    (``run``, with ``best_ckpt`` and ``last.ckpt``), ``multirun/<date>/<time>/`` (``sweep``, two seeds of
    extending.md's calibration walkthrough), ``photos/`` and ``other_eval/`` (an evaluation on
    TinyImageNet-C, a reference for mCE); ``data_dir`` holds CIFAR-100 and TinyImageNet-C stand-ins."""

    folder: Path
    data_dir: Path
    run: str
    best_ckpt: str
    sweep: str
    other_eval: str


def program_argv(program: str) -> list[str]:
    """``vitlab-x`` is the console script beside this interpreter; ``python -m vitlab.x`` is this interpreter."""
    if program.startswith("python "):
        return [sys.executable, *program.split()[1:]]
    script = Path(sys.executable).parent / program
    return [str(script if script.exists() else shutil.which(program) or program)]


def reader_env(data_dir: Path, prefix: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a reader's shell: logs/ in the working folder (no VITLAB_LOG_DIR), data in
    ``data_dir``; this checkout's code first on the path, after a documented ``PYTHONPATH=.``."""
    env = {k: v for k, v in os.environ.items() if k != "VITLAB_LOG_DIR"}
    path = [*(prefix or {}).values(), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env.update(VITLAB_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join(p for p in path if p))
    return env


def run_program(program: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [*program_argv(program), *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def succeeded(done: subprocess.CompletedProcess, what: str) -> None:
    assert done.returncode == 0, f"{what}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ReaderWorld:
    base = tmp_path_factory.mktemp("docs_run")
    data_dir, folder = base / "data", base / "reader"
    folder.mkdir()
    write_cifar("cifar100", data_dir / "cifar100", num_train=CIFAR100_TRAIN, num_test=CIFAR100_TEST)
    write_corruption_fixture(data_dir / "Tiny-ImageNet-C", severities=(1, 2, 3, 5))
    # TinyImageNet-C's labels come from TinyImageNet-200's wnids.txt; the run classifies 100 classes,
    # so the list holds the fixture's ten wnids and ninety without images.
    (data_dir / "tiny-imagenet-200").mkdir()
    wnids = [*WNIDS, *(f"n1{i:07d}" for i in range(90))]
    (data_dir / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join(wnids) + "\n")
    env = reader_env(data_dir)

    training = ["model=mini_vit", "data=cifar100", *TINY_TRAINING]
    succeeded(run_program("vitlab-train", training, folder, env), "the training run")
    (run,) = (folder / "logs" / "train" / "runs").iterdir()
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")
    assert (run / "checkpoints" / "last.ckpt").is_file()

    # The sweep is extending.md's walkthrough: its callback records test/ece, which report --metric reads.
    (folder / "mypkg").mkdir()
    (folder / "mypkg" / "__init__.py").write_text("")
    (calibration,) = blocks(section("A new report metric"), "python")
    (folder / "mypkg" / "calibration.py").write_text(calibration)
    (sweep_line,) = [c for c in documented_commands("train") if "mypkg.calibration" in c.args]
    sweep_args = [*shlex.split(sweep_line.args), *TINY_SWEEP]
    succeeded(run_program(sweep_line.program, sweep_args, folder, reader_env(data_dir, sweep_line.env)), "the sweep")
    (sweep,) = (folder / "multirun").glob("*/*")
    assert len(list(sweep.glob("*/metrics.json"))) == 2

    (folder / "photos").mkdir()
    for i, (name, colour) in enumerate(PHOTOS.items()):
        Image.new("RGB", (40 + 8 * i, 40), colour).save(folder / "photos" / name)

    other = ["ckpt_path=" + str((run / "checkpoints" / "last.ckpt").relative_to(folder)), "data=tinyimagenet_c",
             "data.num_classes=100", "data.img_size=32", "hardware=cpu", "hardware.num_workers=0", "out_dir=other_eval"]
    succeeded(run_program("vitlab-evaluate", other, folder, env), "the reference evaluation")
    return ReaderWorld(folder, data_dir, str(run.relative_to(folder)), str(best.relative_to(folder)),
                       str(sweep.relative_to(folder)), "other_eval")


# --------------------------------------------------------------------------------------------
# From a documented line to the command run


def with_paths(args: str, world: ReaderWorld) -> str:
    """The reader's placeholders replaced by the world's paths (the longest first: ``<run>`` is part
    of longer ones); generic metavariables of a synopsis become one real value."""
    replacements = [
        ("logs/train/runs/<run>/checkpoints/epoch_012.ckpt", world.best_ckpt),
        ("logs/train/runs/<run>", world.run),
        ("logs/train/runs/<date>_<time>", world.run),
        ("<run folder>", world.run),
        ("<run>", world.run),
        ("multirun/<date>/<time>", world.sweep),
        ("<multirun dir>", world.sweep),
        ("<other eval dir>", world.other_eval),
        ("<folder>", "report_elsewhere"),
        ("ckpt_path=...", f"ckpt_path={world.best_ckpt}"),
        ("key=value ...", "model=mini_vit"),
        ("KEY ...", "test/ece"),
    ]
    for placeholder, path in replacements:
        args = args.replace(placeholder, path)
    return args


def without_optional_brackets(args: str) -> str:
    """``[x]`` at the start of a word is an optional part: its brackets go, brackets inside it stay
    (``[data.severities=[1,3,5]]`` becomes ``data.severities=[1,3,5]``)."""
    kept, optional = [], []
    for i, char in enumerate(args):
        if char == "[":
            optional.append(not optional and (i == 0 or args[i - 1] == " "))
            if optional[-1]:
                continue
        elif char == "]" and optional:
            if optional.pop():
                continue
        kept.append(char)
    return "".join(kept)


def tiny_settings(command: DocCommand, args: list[str]) -> list[str]:
    """What is appended so the line finishes in seconds, or fits the world's data."""
    if command.program.endswith("bench"):
        from vitlab.bench import parse_args

        # Every registered network (34) takes half a minute to build and count even with nothing
        # timed; one network stands for them.
        return [*TINY_BENCH, *([] if parse_args(args).models else ["mini_vit"])]
    if command.program.endswith("evaluate") and "data=tinyimagenet_c" in args:
        # The run classifies CIFAR-100's 100 classes at 32 px (TinyImageNet's 200 at 64 px in the docs).
        return ["data.num_classes=100", "data.img_size=32"]
    return []


def as_run(command: DocCommand, world: ReaderWorld) -> list[str]:
    text = without_optional_brackets(with_paths(command.args, world))
    assert "<" not in text and "..." not in text, f"{command.where}: a placeholder this module does not know: {text}"
    args = shlex.split(text)
    return [*args, *tiny_settings(command, args)]


COMMANDS = documented_commands(*PROGRAMS)


def test_every_documented_line_is_run_or_named_with_its_reason():
    texts = [c.text for c in COMMANDS]
    assert len(texts) >= 24, texts
    # A listed line that left the docs is a stale entry.
    assert not set(NEEDS_CUDA) - set(texts), set(NEEDS_CUDA) - set(texts)
    # Any line that starts with one of the commands is one the parser found (none hides at column 0,
    # behind a prompt or in another spelling).
    names = "|".join(PROGRAMS)
    anywhere = re.compile(rf"^\s*(\$ )?([A-Z_]+=\S+ )*(vitlab-({names})|python3? -m vitlab\.({names}))\b")
    found = {c.where for c in COMMANDS}
    for doc in DOCS:
        for i, line in enumerate(doc.read_text().splitlines()):
            if anywhere.match(line):
                assert f"{doc.relative_to(ROOT)}:{i + 1}" in found, f"{doc.relative_to(ROOT)}:{i + 1}: {line.strip()}"


# --------------------------------------------------------------------------------------------
# What each command writes, as its docs describe it


def new_files(folder: Path, before: dict[Path, int]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p not in before)


def only(files: list[Path], name: str) -> Path:
    matching = [f for f in files if f.name == name]
    assert len(matching) == 1, f"expected one new {name}, got {matching}"
    return matching[0]


def check_evaluate(args: list[str], written: list[Path], done, cwd: Path) -> None:
    out = only(written, "eval_metrics.json").parent
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "per_class.csv", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    scores = json.loads((out / "eval_metrics.json").read_text())["sets"]
    if "data=tinyimagenet_c" in args:
        for name in ("robustness.csv", "robustness.json", "robustness.md", "robustness_per_corruption.png",
                     "robustness_per_severity.png"):
            assert (out / name).stat().st_size > 0, name
        robustness = json.loads((out / "robustness.json").read_text())
        severities = {int(s) for per in robustness["table"].values() for s in per}
        assert severities == ({1, 3, 5} if "data.severities=[1,3,5]" in args else {1, 2, 3, 5}), robustness["table"]
        assert (robustness["mce"] is not None) == any(a.startswith("reference=") for a in args)
        assert set(scores) >= {"gaussian_noise/1", "fog/5"}
    else:
        assert scores["all"]["images"] == CIFAR100_TEST
    if "probe=linear" in args:
        assert len(list(csv.DictReader((out / "probe.csv").open()))) >= 1


def check_analyze(args: list[str], written: list[Path], done, cwd: Path) -> None:
    out = only(written, "mad_metrics.json").parent
    rows = list(csv.DictReader((out / "mad_metrics.csv").open()))
    assert rows and {r["map"] for r in rows} >= {"blocks.0"}
    assert list((out / "overlays").glob("*.png"))


def check_report(args: list[str], written: list[Path], done, cwd: Path) -> None:
    out = only(written, "report.md").parent
    expected = cwd / args[args.index("--out") + 1] if "--out" in args else cwd / args[0] / "report"
    assert out == expected, (out, expected)
    for name in ("report.csv", "runs.csv", "convergence.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == 2
    header = (out / "report.md").read_text().splitlines()[0]
    if "--against" in args:
        assert "seed top-1 (%)" in header
    groups = list(csv.DictReader((out / "report.csv").open()))
    for metric in (args[i + 1] for i, a in enumerate(args) if a == "--metric"):
        # A column of its own, averaged over the group's two runs.
        assert f" {metric} " in header
        column = metric.replace("/", "_")
        assert all(float(g[f"{column}_mean"]) >= 0 and g[f"{column}_n"] == "2" for g in groups), groups


def check_bench(args: list[str], written: list[Path], done, cwd: Path) -> None:
    from vitlab.bench import parse_args

    options = parse_args(args)
    (table,) = [f for f in written if f.suffix == ".csv" and f.parent == cwd / "bench" / "out"]
    assert table.with_suffix(".md").is_file()
    rows = list(csv.DictReader(table.open()))
    assert [r["model"] for r in rows if not r["reference_of"]] == options.models
    assert len([r for r in rows if r["reference_of"]]) == (len(options.models) if options.against else 0)
    if options.mode == "flops":
        assert all(float(r["train_flops_per_img"]) > 0 and not r["train_img_s"] for r in rows)
    else:
        assert all(float(r["train_img_s"]) > 0 for r in rows)
    if options.relative_to:
        # Each network's train img/s as a ratio to the named one, which is 1.00x to itself.
        lines = table.with_suffix(".md").read_text().splitlines()
        assert any(f"| train vs {options.relative_to} |" in ln for ln in lines)
        assert any(ln.startswith(f"| {options.relative_to} |") and ln.endswith("| 1.00x |") for ln in lines)


def check_predict(args: list[str], written: list[Path], done, cwd: Path) -> None:
    top_k = int(args[args.index("--top-k") + 1])
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("photos/")]
    assert len(lines) == 3 and all(ln.count(",") == top_k - 1 for ln in lines), done.stdout
    if "--out" in args:
        rows = list(csv.DictReader((cwd / args[args.index("--out") + 1]).open()))
        assert len(rows) == 3 * top_k and {r["path"] for r in rows} == {f"photos/{n}" for n in PHOTOS}


def check_export(args: list[str], written: list[Path], done, cwd: Path) -> None:
    formats = args[args.index("--formats") + 1:] if "--formats" in args else ["onnx", "pt2", "safetensors"]
    formats = [f for f in formats if not f.startswith("-")]
    if "--out" in args:
        out = cwd / args[args.index("--out") + 1]
    else:
        out = cwd / (args[0] if not args[0].endswith(".ckpt") else Path(args[0]).parent.parent) / "export"
    assert {p.name for p in written} == {*(f"model.{f}" for f in formats), "config.yaml", "classes.json", "export.json"}
    assert all(p.parent == out for p in written), written
    assert len(json.loads((out / "classes.json").read_text())) == 100
    record = json.loads((out / "export.json").read_text())
    assert set(record["files"]) == set(formats)
    assert ("onnx" not in formats) or record["onnx_check"]["ok"] is True


CHECKS = {"evaluate": check_evaluate, "analyze": check_analyze, "report": check_report, "bench": check_bench,
          "predict": check_predict, "export": check_export}


def reader_folder(world: ReaderWorld, tmp_path: Path) -> Path:
    """A test's own copy of the reader's folder (export and report refuse to write twice into the same
    run or sweep). Hard links: the commands only add files, never rewrite the run's."""
    folder = tmp_path / "reader"
    shutil.copytree(world.folder, folder, copy_function=os.link)
    return folder


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_a_documented_line_runs_and_writes_what_its_docs_say(command, world, tmp_path):
    if command.text in NEEDS_CUDA and not torch.cuda.is_available():
        pytest.skip(f"{command.where}: {NEEDS_CUDA[command.text]}")
    cwd = reader_folder(world, tmp_path)
    args = as_run(command, world)
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*") if p.is_file()}
    done = run_program(command.program, args, cwd, reader_env(world.data_dir, command.env))
    succeeded(done, f"{command.where}: {command.program} {shlex.join(args)}")
    # The reader's files are read, never rewritten (and the copies share them with the other tests).
    assert not [p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime]
    name = command.program.replace("python -m vitlab.", "").replace("vitlab-", "")
    CHECKS[name](args, new_files(cwd, before), done, cwd)
