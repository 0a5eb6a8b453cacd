"""Files from the internet never run code: dataset files, tensor caches and checkpoints that name a
Python callable are refused in one line before anything is called."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_data_config
from test_datamodules import CIFAR_LAYOUTS, _planes_row, write_cifar
from test_evaluate import compose_evaluate
from vitlab.checkpoint import ALLOW_UNSIGNED_ENV, DIGEST_KEY, DigestCheckpointIO, load_checkpoint
from vitlab.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


class _CreatesMarker:
    """Pickled as a call to ``open(marker, "w")``: what a doctored batch would run while it loads."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ----------------------------------------------------------------------------------- CIFAR batches
def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol-2 pickle (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(data)]) + data) if len(data) < 256 else (b"T" + struct.pack("<i", len(data)) + data)


def _py2_int(value: int) -> bytes:
    return (b"K" + bytes([value])) if 0 <= value < 256 else (b"J" + struct.pack("<i", value))


def _py2_uint8_array(array: np.ndarray) -> bytes:
    """A 2-D uint8 array as cPickle under numpy 1 wrote it: ``_reconstruct(ndarray, (0,), 'b')``, then
    its state (version, shape, ``dtype('u1', 0, 1)`` with its own state, Fortran order, raw bytes)."""
    rows, cols = array.shape
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R(" + _py2_int(1) + _py2_int(rows) + _py2_int(cols) + b"\x86"
            + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
            + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
            + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def python2_batch(content: dict[bytes, object]) -> bytes:
    """``content`` pickled the way the official archive's batches are: protocol 2 by Python 2 (str
    keys and values, lists of ints or str, uint8 arrays)."""
    out = b"\x80\x02}("
    for key, value in content.items():
        out += _py2_str(key)
        if isinstance(value, np.ndarray):
            out += _py2_uint8_array(value)
        elif isinstance(value, list):
            out += b"](" + b"".join(_py2_int(v) if isinstance(v, int) else _py2_str(v) for v in value) + b"e"
        else:
            out += _py2_str(value)
    return out + b"u."


def _cifar10_module(tmp_path: Path):
    cfg = compose_data_config("cifar10", tmp_path, "data.val_size=10", "data.download=false")
    return instantiate(cfg.data, _convert_="all")


def test_a_batch_with_a_reduce_payload_is_refused_in_one_line_and_never_runs(tmp_path):
    write_cifar("cifar10", tmp_path / "cifar10")
    marker = tmp_path / "payload_ran"
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _CreatesMarker(marker), b"labels": [0]}, protocol=2))
    # The payload is real: plain pickle runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesMarker(probe), protocol=2)).close()
    assert probe.exists()

    dm = _cifar10_module(tmp_path)
    with pytest.raises(DataError) as refused:
        dm.setup("fit")
    message = str(refused.value)
    assert not marker.exists()
    assert "\n" not in message
    assert message == (
        f"data.data_dir: {batch} asks to load io.open, which a CIFAR-10 batch never holds; the file is not an "
        "official CIFAR-10 batch: delete it and run with data.download=true to fetch it again"
    )


@pytest.mark.parametrize(("global_name", "what"), [
    (b"cposix\nsystem\n", "posix.system"),
    (b"cno_such_module_here\nthing\n", "no_such_module_here.thing"),  # refused by name, never imported
    (b"c__builtin__\neval\n", "__builtin__.eval"),
])
def test_any_other_global_is_refused_by_name(tmp_path, global_name, what):
    write_cifar("cifar10", tmp_path / "cifar10")
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"\x80\x02" + global_name + _py2_str(b"touch x") + b"\x85R.")
    with pytest.raises(DataError) as refused:
        _cifar10_module(tmp_path).setup("test")
    assert str(refused.value).startswith(f"data.data_dir: {batch} asks to load {what}, which a CIFAR-10 batch never holds")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("array", "what"), [
    (np.array([object()], dtype=object), "a numpy array of dtype object"),
    (np.zeros((2, 3072), dtype=np.float32), "a numpy array of dtype float32"),
])
def test_arrays_of_other_dtypes_are_refused(tmp_path, array, what):
    write_cifar("cifar100", tmp_path / "cifar100")
    batch = tmp_path / "cifar100" / "cifar-100-python" / "train"
    batch.write_bytes(pickle.dumps({b"data": array, b"fine_labels": [0, 1]}, protocol=2))
    cfg = compose_data_config("cifar100", tmp_path, "data.val_size=10", "data.download=false")
    with pytest.raises(DataError, match=rf"^data\.data_dir: .*train asks to load {what}, which a CIFAR-100 batch"):
        instantiate(cfg.data, _convert_="all").setup("fit")


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_batches_in_the_official_format_still_load(tmp_path, kind):
    """Every file rewritten as Python 2 pickled them (protocol 2, str as SHORT_BINSTRING, numpy's
    ``_reconstruct``), with the official batches' other keys."""
    files = write_cifar(kind, tmp_path / kind)
    module_class, folder, train_files, test_file, meta_file, label_key, names_key, classes = CIFAR_LAYOUTS[kind]
    root = tmp_path / kind / folder
    per_file = len(files.train_images) // len(train_files)
    for index, name in enumerate(train_files):
        part = slice(index * per_file, (index + 1) * per_file)
        labels = files.train_labels[part].tolist()
        content = {b"batch_label": f"training batch {index + 1} of {len(train_files)}".encode(), label_key: labels,
                   b"data": np.stack([_planes_row(image) for image in files.train_images[part]]),
                   b"filenames": [f"image_{i}.png".encode() for i in range(len(labels))]}
        if kind == "cifar100":
            content[b"coarse_labels"] = [label // 5 for label in labels]
        (root / name).write_bytes(python2_batch(content))
    (root / test_file).write_bytes(python2_batch({
        b"batch_label": b"testing batch 1 of 1", label_key: files.test_labels.tolist(),
        b"data": np.stack([_planes_row(image) for image in files.test_images])}))
    (root / meta_file).write_bytes(python2_batch({names_key: [name.encode() for name in files.names]}))
    assert (root / test_file).read_bytes().startswith(b"\x80\x02}(U")  # Python 2's protocol 2, not Python 3's

    cfg = compose_data_config(kind, tmp_path, "data.val_size=0", "data.download=false")
    dm = instantiate(cfg.data, _convert_="all")
    assert type(dm) is module_class
    dm.setup("fit")
    assert len(dm.train_set) == len(files.train_images) and dm.classes == files.names
    np.testing.assert_array_equal(dm.test_set.images, files.test_images)
    np.testing.assert_array_equal(dm.test_set.labels, files.test_labels)
    assert len(dm.classes) == classes


# ----------------------------------------------------------------------------------- checkpoints
def _signed(path: Path, state_dict: dict, **extra) -> Path:
    DigestCheckpointIO().save_checkpoint({"state_dict": state_dict, "epoch": 1, **extra}, path)
    return path


def test_deleting_the_digest_does_not_get_a_checkpoint_past_the_loader(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV, raising=False)
    path = _signed(tmp_path / "last.ckpt", {"net.w": torch.ones(3)})
    assert torch.equal(load_checkpoint(path)["state_dict"]["net.w"], torch.ones(3))
    edited = torch.load(path, weights_only=True)
    del edited[DIGEST_KEY]
    edited["state_dict"]["net.w"] = torch.full((3,), 7.0)  # the edit the digest would have caught
    torch.save(edited, path)
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(path, key="ckpt_path")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"ckpt_path: {path} carries no vitlab_digest")
    assert message.endswith(f"if you trust its source, set {ALLOW_UNSIGNED_ENV}=1 to load it")
    monkeypatch.setenv(ALLOW_UNSIGNED_ENV, "1")
    assert torch.equal(load_checkpoint(path)["state_dict"]["net.w"], torch.full((3,), 7.0))


@pytest.mark.parametrize(("bad", "kind"), [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")])
def test_non_finite_weights_are_refused_naming_the_first_tensor(tmp_path, bad, kind):
    weights = torch.ones(4)
    weights[2] = bad
    state = {"net.a": torch.ones(2), "net.steps": torch.tensor([3]), "net.b": weights, "net.c": torch.full((2,), bad)}
    path = _signed(tmp_path / "diverged.ckpt", state)
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        f"ckpt_path: {path} holds non-finite weights (net.b has {kind} values); the run diverged before this "
        "checkpoint was saved: use an earlier checkpoint of the run, e.g. its epoch_*.ckpt"
    )


def test_the_switch_reaches_the_python_api_and_evaluate(tmp_path, monkeypatch, one_thread):
    """``vitlab.load_run`` (predict and export use it) and ``vitlab.evaluate`` read checkpoints
    through the one loader: an unsigned one is refused without the switch and loads with it."""
    import vitlab
    from vitlab.evaluate import evaluate

    cfg = vitlab.compose("model=mini_vit", "data=synthetic", "data.num_classes=4", "data.img_size=32",
                         output_dir=tmp_path / "run")
    module = vitlab.build_module(cfg)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)

    monkeypatch.delenv(ALLOW_UNSIGNED_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"^ckpt_path: {ckpt} carries no vitlab_digest .*{ALLOW_UNSIGNED_ENV}=1"):
        vitlab.load_run(run)
    with pytest.raises(ConfigError, match=rf"^ckpt_path: {ckpt} carries no vitlab_digest"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", out_dir=tmp_path / "eval"))
    monkeypatch.setenv(ALLOW_UNSIGNED_ENV, "1")
    loaded = vitlab.load_run(run)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value), name


# ----------------------------------------------------------------------------------- tensor caches
def test_a_cache_file_holding_a_pickle_counts_as_corrupt_and_never_runs(tmp_path):
    from vitlab.datamodules.tensor_cache import _check_cache, cache_paths

    marker = tmp_path / "payload_ran"
    paths = cache_paths(tmp_path, "TinyImageNetDataModule-train-0123")
    np.save(paths["images"], np.zeros((1, 4, 4, 3), dtype=np.uint8))
    np.save(paths["labels"], np.array([_CreatesMarker(marker)], dtype=object), allow_pickle=True)
    paths["meta"].write_text('{"key": "k", "shape": [1, 4, 4, 3], "format": 1}\n')
    found = _check_cache(paths, "k", 1)
    assert isinstance(found, str) and found.startswith("corrupt (ValueError: Object arrays cannot be loaded")
    assert not marker.exists()


# ----------------------------------------------------------------------------------- SVHN .mat files
def test_an_svhn_file_of_cells_is_refused_in_one_line(tmp_path):
    import scipy.io

    from vitlab.datamodules import SVHNDataModule

    cells = np.empty((32, 32, 3, 2), dtype=object)
    cells[...] = "x"
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": cells, "y": np.ones((2, 1), np.uint8)})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataError) as refused:
        SVHNDataModule(str(tmp_path), download=False, val_size=1).setup("fit")
    assert str(refused.value) == (
        f"data.data_dir: {tmp_path / 'train_32x32.mat'} holds X of type object and y of type uint8, expected uint8 "
        "pixels and numeric labels (an official SVHN file); delete it and run with data.download=true to fetch it again"
    )


# ----------------------------------------------------------------------------------- image files
def test_an_image_named_jpeg_that_is_postscript_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin, Image

    from vitlab.datamodules.images import ImageDecodeError, load_image

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    path = tmp_path / "n01443537_0.JPEG"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n")
    with Image.open(path) as image:  # what PIL makes of it when every format is allowed
        assert image.format == "EPS"
    with pytest.raises(ImageDecodeError) as refused:
        load_image(path)
    assert str(refused.value).startswith(f"{path}: cannot decode image (") and "\n" not in str(refused.value)
    assert calls == []
    Image.new("RGB", (4, 4), (9, 8, 7)).save(tmp_path / "fine.png")
    assert load_image(tmp_path / "fine.png").getpixel((0, 0)) == (9, 8, 7)


# ----------------------------------------------------------------------------------- run folders
@pytest.mark.parametrize(("key", "node", "what"), [
    ("model", {"_target_": "builtins.open"}, "model._target_ 'builtins.open'"),
    ("data", {"_target_": "os.system", "_args_": ["touch payload_ran"]}, "data._target_ 'os.system'"),
    ("data", {"augment": {"_target_": "builtins.open", "file": "payload_ran", "mode": "w"}}, "data.augment._target_"),
])
def test_a_run_config_naming_another_callable_is_refused(tmp_path, monkeypatch, key, node, what):
    import vitlab

    monkeypatch.chdir(tmp_path)
    cfg = vitlab.compose("model=mini_vit", "data=synthetic", "data.num_classes=4", "data.img_size=32",
                         output_dir=tmp_path / "run")
    module = vitlab.build_module(cfg)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), {key: node})
    OmegaConf.save(cfg, run / "config.yaml")
    _signed(run / "checkpoints" / "last.ckpt", module.state_dict(), hyper_parameters=dict(module.hparams))
    with pytest.raises(ConfigError) as refused:
        vitlab.load_run(run)
    assert str(refused.value).startswith(f"ckpt_path: {run / 'config.yaml'} names {what}, which is not a ")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "payload_ran").exists()
