"""A dataset that cannot be trained on is refused before the first training step, in one ``error:``
line with exit status 2, and the refused run leaves no run folder behind.

Each case writes real files (an empty image, a text file named .jpg, a truncated PNG, a CIFAR batch
of the wrong shape, ...) and runs the real command-line path in this process, with the default
TensorBoard logger on (a logger that has written its event file used to keep the run folder alive).
The cheap per-file check of image folders (``vitlab.datamodules.images.check_image_files``) and its
stamp are tested on their own below.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_config_errors import run_in_process
from vitlab.datamodules import ImageDecodeError, ImageFolderDataModule, images
from vitlab.datamodules.images import check_image_files, image_file_problem
from vitlab.errors import DataError

# A tiny run on CPU that keeps the default logger (tensorboard), unlike test_config_errors' COMMON.
RUN = [
    "hardware=cpu", "hardware.num_workers=0", "recipe.epochs=1", "recipe.batch_size=4", "recipe.repeated_aug=1",
    "trainer.limit_train_batches=1", "callbacks.progress_bar.kind=tqdm",
]
FOLDER = ["data=image_folder", "data.root=root", "data.num_classes=2", "data.val_size=2", "data.img_size=16"]
CLASSES = ("cat", "dog")


def _image(path: Path, fmt: str = "PNG", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


def _image_folder(root: Path) -> None:
    """<root>/{train,test}/{cat,dog}/<n>.png: four 16 px images per class and split."""
    for split in ("train", "test"):
        for label in CLASSES:
            for n in range(4):
                _image(root / split / label / f"{n}.png", seed=n)


def _cifar_batches(folder: Path, width: int = 3072) -> None:
    """The files of cifar-10-batches-py, each batch holding rows of ``width`` bytes."""
    folder.mkdir(parents=True)
    batch = {b"data": np.zeros((4, width), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def _truncated(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _empty_image(root: Path) -> None:
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")


def _text_as_jpg(root: Path) -> None:
    (root / "train" / "dog" / "notes.jpg").write_text("not an image\n")


def _truncated_png_in_test(root: Path) -> None:
    _truncated(root / "test" / "dog" / "3.png")


def _truncated_jpeg_in_test(root: Path) -> None:
    _truncated(_image(root / "test" / "cat" / "9.jpg", "JPEG"), keep=0.9)


def _other_format(root: Path) -> None:
    (root / "test" / "cat" / "drawing.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n")


def _empty_class(root: Path) -> None:
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("no images here")


def _no_test_split(root: Path) -> None:
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()


def _test_classes_differ(root: Path) -> None:
    (root / "test" / "dog").rename(root / "test" / "wolf")


def _nothing(root: Path) -> None:
    pass


def _cifar_wrong_shape(root: Path) -> None:
    _cifar_batches(root.parent / "cifar" / "cifar-10-batches-py", width=100)


def _cifar_incomplete(root: Path) -> None:
    _cifar_batches(root.parent / "cifar" / "cifar-10-batches-py")
    (root.parent / "cifar" / "cifar-10-batches-py" / "test_batch").unlink()


# (id, how the files are spoiled, extra overrides, the start of the error line; {root} is the root's path)
CASES = [
    ("empty image", _empty_image, [], "error: data.root: {root}/train/cat/empty.jpg is not a readable image (the file is empty); remove or replace it"),
    ("text file named .jpg", _text_as_jpg, [], "error: data.root: {root}/train/dog/notes.jpg is not a readable image (not a JPEG, PNG"),
    ("truncated PNG in test", _truncated_png_in_test, [], "error: data.root: {root}/test/dog/3.png is not a readable image (image file is truncated); remove or replace it"),
    ("truncated JPEG in test", _truncated_jpeg_in_test, [], "error: data.root: {root}/test/cat/9.jpg is not a readable image (image file is truncated"),
    ("EPS named .png", _other_format, [], "error: data.root: {root}/test/cat/drawing.png is not a readable image (not a JPEG, PNG"),
    ("class folder without images", _empty_class, ["data.num_classes=3"], "error: data.root: class folder(s) bird in {root}/train hold no images"),
    ("test split missing", _no_test_split, [], "error: data.root: no test/ folder in {root}; add it or set data.test_dir"),
    ("test classes differ", _test_classes_differ, [], "error: data.root: class folders of {root}/test differ from {root}/train"),
    ("wrong class count", _nothing, ["data.num_classes=5"], "error: data.num_classes: is 5 but {root}/train has 2 class folders"),
    ("root does not exist", _nothing, ["data.root=no_such_root"], "error: data.root: {root}/../no_such_root is not a folder"),
    ("val_size takes every image", _nothing, ["data.val_size=8"], "error: data.val_size: 8 asks for 8 of the 8 training images"),
    ("CIFAR batch of the wrong shape", _cifar_wrong_shape, ["data=cifar10", "data.data_dir=cifar", "data.download=false"],
     "error: data.data_dir: {root}/../cifar/cifar-10-batches-py/data_batch_1 holds data of shape (4, 100)"),
    ("CIFAR batch missing", _cifar_incomplete, ["data=cifar10", "data.data_dir=cifar", "data.download=false"],
     "error: data.data_dir: {root}/../cifar/cifar-10-batches-py is incomplete (missing test_batch)"),
    ("CIFAR data_dir does not exist", _nothing, ["data=cifar10", "data.data_dir=no_such_dir", "data.download=false"],
     "error: data.data_dir: "),
]


def _refused(tmp_path: Path, overrides: list[str]) -> str:
    """Run the CLI; assert exit 2, one error line, no traceback and no run folder; the error line."""
    data = FOLDER if not any(o.startswith("data=") for o in overrides) else []
    code, stderr = run_in_process([*RUN, *data, *overrides])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("logs/train/runs/*/**/*"))
    assert not list(tmp_path.glob("logs/train/runs/*")), left
    return errors[0]


@pytest.mark.parametrize("spoil, overrides, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_is_refused_before_training_and_leaves_no_run_folder(spoil, overrides, expected, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    root = tmp_path / "root"
    _image_folder(root)
    spoil(root)
    error = _refused(tmp_path, overrides)
    wanted = expected.format(root=root).replace(f"{root}/../", f"{tmp_path}/")
    assert error.startswith(wanted), error


def test_a_data_error_during_fit_leaves_no_run_folder(tmp_path, monkeypatch, one_thread):
    """An error that only shows once fit has started (after config.yaml and the TensorBoard event file
    were written, before any checkpoint) still leaves nothing behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    _image_folder(tmp_path / "root")

    def fails(self):
        raise DataError("data.root: a file went missing while training")

    monkeypatch.setattr(ImageFolderDataModule, "train_dataloader", fails)
    assert _refused(tmp_path, []) == "error: data.root: a file went missing while training"


def test_a_refused_run_keeps_an_earlier_runs_folder(tmp_path, monkeypatch, one_thread):
    """A refused run into an existing run folder (paths.output_dir) removes nothing of it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    root = tmp_path / "root"
    _image_folder(root)
    _empty_image(root)
    earlier = tmp_path / "earlier"
    (earlier / "tensorboard").mkdir(parents=True)
    (earlier / "config.yaml").write_text("seed: 0\n")
    old = time.time() - 3600
    for path in (earlier / "tensorboard", earlier / "config.yaml"):
        os.utime(path, (old, old))
    code, stderr = run_in_process([*RUN, *FOLDER, f"paths.output_dir={earlier}"])
    assert code == 2, stderr[-2000:]
    assert (earlier / "config.yaml").read_text() == "seed: 0\n" and (earlier / "tensorboard").is_dir()


# The cheap check on its own.


def test_what_the_cheap_check_catches(tmp_path):
    good_jpg, good_png = _image(tmp_path / "a.jpg", "JPEG"), _image(tmp_path / "b.png")
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(good_jpg.read_bytes() + b"\0\0extra bytes after the end marker")
    no_iend = tmp_path / "no_iend.png"
    no_iend.write_bytes(good_png.read_bytes()[:-12])  # every pixel is there, only the IEND chunk is missing
    gif = _image(tmp_path / "c.gif", "GIF")
    for path in (good_jpg, good_png, trailing, no_iend, gif):
        assert image_file_problem(path, path.stat().st_size) is None, path
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert image_file_problem(empty, 0) == "the file is empty"
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    assert image_file_problem(text, 5).startswith("not a JPEG, PNG, BMP")
    cut_gif = tmp_path / "cut.gif"
    cut_gif.write_bytes(gif.read_bytes()[:-40])
    assert "truncated" in image_file_problem(cut_gif, cut_gif.stat().st_size)


def test_every_bad_file_is_counted_in_the_one_line(tmp_path):
    paths = [_image(tmp_path / f"{n}.png", seed=n) for n in range(3)]
    for n in range(5):
        (tmp_path / f"bad{n}.jpg").write_bytes(b"")
        paths.append(tmp_path / f"bad{n}.jpg")
    with pytest.raises(ImageDecodeError) as refused:
        check_image_files([str(p) for p in paths], cache_dir=tmp_path / "cache", stamp="Test-train")
    message = str(refused.value)
    assert message.startswith(f"data.root: {tmp_path}/bad0.jpg is not a readable image (the file is empty); remove or replace it")
    assert message.endswith(f"(4 more file(s) fail the same check: {tmp_path}/bad1.jpg, {tmp_path}/bad2.jpg, {tmp_path}/bad3.jpg, ...)")
    assert "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing remembered for a split that failed


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ImageDecodeError, match=f"data.root: {tmp_path}/gone.png is not a readable image \\(No such file"):
        check_image_files([str(tmp_path / "gone.png")], cache_dir=tmp_path / "cache", stamp="Test-train")


def test_a_checked_split_is_not_checked_again_until_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "STAMP_MIN_FILES", 1)
    paths = [str(_image(tmp_path / f"{n}.png", seed=n)) for n in range(3)]
    cache = tmp_path / "cache"
    check_image_files(paths, cache_dir=cache, stamp="Test-train")
    (stamp,) = cache.glob("Test-train-*.checked.json")
    opened = []
    monkeypatch.setattr(images, "image_file_problem", lambda path, size: opened.append(path))
    check_image_files(paths, cache_dir=cache, stamp="Test-train")
    assert opened == []  # the stamp matched: no file opened
    check_image_files(paths[:2], cache_dir=cache, stamp="Test-train")  # another file list: its own stamp
    assert len(opened) == 2 and len(list(cache.glob("*.checked.json"))) == 2
    opened.clear()
    later = time.time() + 5
    os.utime(paths[1], (later, later))  # a file changed since: the split is checked again
    check_image_files(paths, cache_dir=cache, stamp="Test-train")
    assert opened == paths


def test_an_unwritable_cache_folder_only_costs_the_check_again(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "STAMP_MIN_FILES", 1)
    paths = [str(_image(tmp_path / "a.png"))]
    (tmp_path / "a_file").write_text("not a folder")
    check_image_files(paths, cache_dir=tmp_path / "a_file" / "cache", stamp="Test-train")  # no error


def test_a_small_split_leaves_no_stamp(tmp_path):
    check_image_files([str(_image(tmp_path / "a.png"))], cache_dir=tmp_path / "cache", stamp="Test-train")
    assert not (tmp_path / "cache").exists()


def test_setup_checks_the_files_of_both_splits_once(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "STAMP_MIN_FILES", 1)
    root = tmp_path / "root"
    _image_folder(root)
    _truncated_png_in_test(root)
    module = ImageFolderDataModule(root=str(root), num_classes=2, img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3,
                                   batch_size=2, num_workers=0, val_size=2, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ImageDecodeError, match="test/dog/3.png is not a readable image"):
        module.setup("fit")
    _image(root / "test" / "dog" / "3.png", seed=3)
    module.setup("fit")
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").glob("*.checked.json")) == ["test", "train"]


@pytest.mark.parametrize("content", [b"", b"these are my notes\n"], ids=["empty", "text"])
def test_an_empty_or_text_ckpt_is_not_answered_with_mmap_advice(content, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    (tmp_path / "bad.ckpt").write_bytes(content)
    code, stderr = run_in_process([*RUN, "~logger", "data=synthetic", "data.train_size=32", "data.val_size=8",
                                   "data.test_size=8", "ckpt_path=bad.ckpt"])
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith("error: ckpt_path: bad.ckpt is "), errors[0]
    assert "mmap" not in errors[0] and "_use_new_zipfile_serialization" not in errors[0], errors[0]
