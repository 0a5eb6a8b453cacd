"""Data modules on small files written in each dataset's real on-disk layout, and conf/data/*.yaml."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from vitlab.datamodules import (
    ArrayImageDataset,
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    RepeatedAugmentationSampler,
    SyntheticDataModule,
)
from vitlab.datamodules.synthetic import generate_images
from conftest import compose_data_config
from vitlab.errors import ConfigError, DataError

CONF_DIR = Path(__file__).resolve().parents[1] / "vitlab" / "conf"
IDENTITY_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
LOADER = {"batch_size": 8, "num_workers": 0, "pin_memory": False}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# CIFAR, written in the official python-pickle layout


@dataclass
class CifarFiles:
    train_images: np.ndarray  # N x 32 x 32 x 3, in file order
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    names: list[str]


CIFAR_LAYOUTS = {
    # module, folder, train files, test file, meta file, label key, names key, classes
    "cifar10": (
        CIFAR10DataModule,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": (
        CIFAR100DataModule,
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        b"fine_labels",
        b"fine_label_names",
        100,
    ),
}


def _planes_row(image: np.ndarray) -> np.ndarray:
    """One CIFAR row: the 32 x 32 R plane, then G, then B, each row-major."""
    return np.concatenate([image[:, :, channel].reshape(-1) for channel in range(3)])


def write_cifar(kind: str, data_dir: Path, num_train: int = 60, num_test: int = 20) -> CifarFiles:
    _, folder, train_files, test_file, meta_file, label_key, names_key, classes = CIFAR_LAYOUTS[kind]
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8)
    test_images = rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8)
    # A marker pixel whose channel and position would move under any plane/axis mix-up.
    train_images[0, 5, 7] = (201, 17, 99)
    train_labels = (np.arange(num_train) * 7) % classes
    test_labels = (np.arange(num_test) * 3) % classes
    names = [f"class_{i:03d}" for i in range(classes)]

    root = data_dir / folder
    root.mkdir(parents=True)

    def dump(name: str, content: dict) -> None:
        with (root / name).open("wb") as f:
            pickle.dump(content, f)

    per_file = num_train // len(train_files)
    for i, name in enumerate(train_files):
        part = slice(i * per_file, (i + 1) * per_file)
        rows = np.stack([_planes_row(image) for image in train_images[part]])
        dump(name, {b"data": rows, label_key: train_labels[part].tolist(), b"batch_label": name.encode()})
    dump(test_file, {b"data": np.stack([_planes_row(im) for im in test_images]), label_key: test_labels.tolist()})
    dump(meta_file, {names_key: [name.encode() for name in names]})
    return CifarFiles(train_images, train_labels, test_images, test_labels, names)


@pytest.fixture(params=["cifar10", "cifar100"])
def cifar(request, tmp_path):
    kind = request.param
    files = write_cifar(kind, tmp_path)
    module_class = CIFAR_LAYOUTS[kind][0]

    def make(**kwargs):
        options = {"download": False, "val_size": 10, "augment": None, **IDENTITY_NORM, **LOADER, **kwargs}
        return module_class(str(tmp_path), **options)

    return kind, files, make


def _as_uint8_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255


def test_cifar_split_sizes_pixels_labels_and_names(cifar):
    _, files, make = cifar
    dm = make()
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    assert dm.classes == files.names
    assert dm.train_set.dataset.images is dm.val_set.dataset.images  # two views, one copy of the data

    view = dm.train_set if 0 in dm.train_set.indices else dm.val_set
    image, label = view[view.indices.index(0)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.allclose(image[:, 5, 7] * 255, torch.tensor([201.0, 17.0, 99.0]), atol=1e-3)
    assert label == files.train_labels[0]

    for view in (dm.train_set, dm.val_set):
        for pos in (0, len(view) - 1):
            index = view.indices[pos]
            image, label = view[pos]
            assert torch.allclose(image, _as_uint8_chw(files.train_images[index]), atol=1e-6)
            assert label == files.train_labels[index]
    image, label = dm.test_set[7]
    assert torch.allclose(image, _as_uint8_chw(files.test_images[7]), atol=1e-6)
    assert label == files.test_labels[7]


def test_cifar_loaders_give_batches(cifar):
    _, _, make = cifar
    dm = make()
    dm.setup()
    for loader, expected_batches in ((dm.train_dataloader(), 6), (dm.val_dataloader(), 2), (dm.test_dataloader(), 3)):
        images, labels = next(iter(loader))
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (8,) and labels.dtype == torch.int64
        assert len(loader) == expected_batches  # train drops the last partial batch, val/test keep it


def test_cifar_validation_split_is_seeded_and_disjoint(cifar):
    _, _, make = cifar
    first, same, other = make(split_seed=0), make(split_seed=0, seed=123), make(split_seed=1)
    for dm in (first, same, other):
        dm.setup()
    assert first.val_set.indices == same.val_set.indices
    assert first.val_set.indices != other.val_set.indices
    assert not set(first.val_set.indices) & set(first.train_set.indices)
    assert sorted(first.val_set.indices + first.train_set.indices) == list(range(60))


def test_cifar_val_size_zero_validates_on_test(cifar):
    _, files, make = cifar
    dm = make(val_size=0)
    dm.setup()
    assert len(dm.train_set) == 60 and dm.val_set is dm.test_set
    assert torch.allclose(dm.val_set[3][0], _as_uint8_chw(files.test_images[3]))


def test_cifar_val_size_fraction(cifar):
    _, _, make = cifar
    dm = make(val_size=0.25)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (45, 15)


@pytest.mark.parametrize("val_size", [60, 1000])
def test_val_size_not_below_train_size_is_a_config_error(cifar, val_size):
    _, _, make = cifar
    with pytest.raises(ConfigError, match=r"^data\.val_size:"):
        make(val_size=val_size).setup()


def test_batch_larger_than_training_set_is_a_config_error(cifar):
    _, _, make = cifar
    dm = make(batch_size=51)
    dm.setup()
    with pytest.raises(ConfigError, match=r"^recipe\.batch_size:"):
        dm.train_dataloader()
    assert len(dm.val_dataloader()) == 1


def test_repeated_aug_uses_the_sampler(cifar):
    _, _, make = cifar
    dm = make(repeated_aug=3)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RepeatedAugmentationSampler)
    assert len(loader.sampler) == 150 and len(loader) == 150 // 8


def test_train_order_is_seeded(cifar):
    _, _, make = cifar

    def first_labels(seed: int) -> list[int]:
        dm = make(seed=seed)
        dm.setup()
        return next(iter(dm.train_dataloader()))[1].tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)


def test_cifar_wrong_num_classes_is_a_config_error(cifar):
    _, _, make = cifar
    with pytest.raises(ConfigError, match=r"^data\.num_classes:"):
        make(num_classes=7)


@pytest.mark.parametrize("module_class", [CIFAR10DataModule, CIFAR100DataModule])
@pytest.mark.parametrize("step", ["prepare_data", "setup"])
def test_missing_cifar_without_download_is_a_data_error(tmp_path, module_class, step):
    dm = module_class(str(tmp_path / "nowhere"), download=False, **IDENTITY_NORM)
    with pytest.raises(DataError) as info:
        getattr(dm, step)()
    message = str(info.value)
    assert message.startswith("data.data_dir:") and "\n" not in message
    assert str(tmp_path / "nowhere" / module_class.folder_name) in message
    assert "data.download=true" in message


def test_prepare_data_downloads_only_when_files_are_missing(tmp_path, monkeypatch):
    calls = []

    class FakeDownload:  # stands in for torchvision's CIFAR10: no network in tests
        def __init__(self, root: str, train: bool, download: bool):
            calls.append((root, train, download))
            write_cifar("cifar10", Path(root))

    monkeypatch.setattr(CIFAR10DataModule, "dataset_class", FakeDownload)
    dm = CIFAR10DataModule(str(tmp_path), download=True, val_size=10, **IDENTITY_NORM, **LOADER)
    dm.prepare_data()
    dm.prepare_data()
    assert calls == [(str(tmp_path), True, True)]
    dm.setup()
    assert len(dm.test_set) == 20


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, root: str, train: bool, download: bool):
            raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR100DataModule, "dataset_class", Offline)
    with pytest.raises(DataError, match=r"^data\.data_dir: could not download CIFAR-100 .*network is unreachable"):
        CIFAR100DataModule(str(tmp_path)).prepare_data()


def test_incomplete_cifar_folder_names_the_missing_file(tmp_path):
    write_cifar("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        CIFAR10DataModule(str(tmp_path), download=False, **IDENTITY_NORM).setup()


def test_cifar_64_px_resizes(tmp_path):
    write_cifar("cifar100", tmp_path)
    dm = CIFAR100DataModule(str(tmp_path), download=False, img_size=64, val_size=10, **LOADER)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert next(iter(loader))[0].shape == (8, 3, 64, 64)


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("data.val_size", {"val_size": 1.5}),
        ("data.val_size", {"val_size": -1}),
        ("data.mean", {"mean": (0.5, 0.5)}),
        ("data.std", {"std": (0.5, 0.0, 0.5)}),
        ("recipe.batch_size", {"batch_size": 0}),
        ("recipe.repeated_aug", {"repeated_aug": 0}),
        ("hardware.num_workers", {"num_workers": -1}),
        ("recipe.augment.cutout", {"augment": {"cutout": 8}}),
    ],
)
def test_bad_constructor_values_name_the_key(tmp_path, key, kwargs):
    with pytest.raises(ConfigError) as info:
        CIFAR10DataModule(str(tmp_path), download=False, **kwargs)
    assert str(info.value).startswith(f"{key}:")


def test_array_dataset_views_share_arrays_and_items_are_copies():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    dataset = ArrayImageDataset(images, [0, 1, 2, 3])
    view = dataset.with_transform(lambda image: image.float())
    assert view.images is dataset.images and view.labels is dataset.labels
    image, label = dataset[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and label == 2
    image.fill_(9)
    assert images.max() == 0
    assert view[0][0].dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Image folders

FOLDER_CLASSES = {"cat": (200, 30, 30), "ant": (30, 200, 30), "dog": (30, 30, 200)}  # not alphabetical


def write_png(path: Path, colour: tuple[int, int, int], size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def write_image_folder(root: Path, per_class_train: int = 4, per_class_test: int = 2) -> None:
    for name, colour in FOLDER_CLASSES.items():
        for i in range(per_class_train):
            write_png(root / "train" / name / f"{i:03d}.png", colour)
        # Test images are darker, to tell which folder an image came from.
        for i in range(per_class_test):
            write_png(root / "test" / name / f"{i:03d}.png", tuple(c // 2 for c in colour))


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    options = {"num_classes": 3, "img_size": 32, "val_size": 0.25, **IDENTITY_NORM, **LOADER, **kwargs}
    return ImageFolderDataModule(str(root), **options)


def test_image_folder_loads_labels_alphabetically_and_tests_on_test_folder(tmp_path):
    write_image_folder(tmp_path)
    dm = folder_module(tmp_path)
    dm.setup()
    assert dm.classes == ["ant", "cat", "dog"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 6)
    assert dm.train_set.dataset.dataset is dm.val_set.dataset.dataset  # the folder is scanned once
    for view, scale in ((dm.train_set, 1), (dm.val_set, 1), (dm.test_set, 2)):
        for pos in range(len(view)):
            image, label = view[pos]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            colour = torch.tensor(FOLDER_CLASSES[dm.classes[label]]) // scale / 255
            assert torch.allclose(image[:, 10, 10], colour.float(), atol=1e-6)
    images, labels = next(iter(dm.test_dataloader()))
    # The whole test folder, class-interleaved: each run of 3 holds every class once.
    assert images.shape == (6, 3, 32, 32) and sorted(labels[:3].tolist()) == sorted(labels[3:].tolist()) == [0, 1, 2]


def test_first_val_and_test_batches_of_a_split_stored_class_by_class_hold_every_class(tmp_path):
    # Five class folders, files sorted class by class as on disk (CIFAR-10 as JPEGs is laid out so).
    names = ["a", "b", "c", "d", "e"]
    for c, name in enumerate(names):
        for i in range(20):
            write_png(tmp_path / "train" / name / f"{i:03d}.png", (40 * c, 0, 0), size=8)
        for i in range(10):
            write_png(tmp_path / "test" / name / f"{i:03d}.png", (40 * c, 0, 0), size=8)
    options = {"num_classes": 5, "img_size": 8, "val_size": 25, **IDENTITY_NORM, **{**LOADER, "batch_size": 5}}
    dm = ImageFolderDataModule(str(tmp_path), **options)
    dm.setup()
    assert [label for _, label in dm.test_set][:10] == [0] * 10  # stored class by class
    first_test = next(iter(dm.test_dataloader()))[1]
    first_val = next(iter(dm.val_dataloader()))[1]
    assert sorted(first_test.tolist()) == [0, 1, 2, 3, 4]
    assert sorted(first_val.tolist()) == [0, 1, 2, 3, 4]
    # A fixed order: the same every epoch and in another run (another global seed), and a permutation.
    again = ImageFolderDataModule(str(tmp_path), **options, seed=7)
    again.setup()
    order = list(dm.test_dataloader().sampler)
    assert order == list(dm.test_dataloader().sampler) == list(again.test_dataloader().sampler)
    assert sorted(order) == list(range(50)) and list(dm.val_dataloader().sampler) == list(again.val_dataloader().sampler)


def test_image_folder_resizes_to_img_size(tmp_path):
    write_image_folder(tmp_path)
    dm = folder_module(tmp_path, img_size=64, augment={"hflip": True, "crop_padding": 8})
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 3, 64, 64)
    assert next(iter(dm.test_dataloader()))[0].shape == (6, 3, 64, 64)


def test_image_folder_root_missing(tmp_path):
    with pytest.raises(DataError) as info:
        folder_module(tmp_path / "absent").setup()
    assert str(info.value).startswith("data.root:") and str(tmp_path / "absent") in str(info.value)


def test_image_folder_split_dir_missing(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(DataError, match=r"^data\.root: no val/ folder in .*data\.test_dir"):
        folder_module(tmp_path, test_dir="val").setup()


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(DataError, match=r"^data\.root: .* has no class sub-folders; .*<root>/train/cat/001\.jpg"):
        folder_module(tmp_path).setup()


def test_image_folder_with_an_empty_class_folder(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "train" / "eel").mkdir()
    with pytest.raises(DataError, match=r"^data\.root: class folder\(s\) eel in "):
        folder_module(tmp_path, num_classes=4).setup()


def test_image_folder_class_folders_must_match_between_splits(tmp_path):
    write_image_folder(tmp_path)
    write_png(tmp_path / "test" / "eel" / "000.png", (1, 2, 3))
    with pytest.raises(DataError, match=r"only in test: \['eel'\]"):
        folder_module(tmp_path).setup()


def test_image_folder_num_classes_mismatch(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.num_classes: is 10 but .* has 3 class folders"):
        folder_module(tmp_path, num_classes=10).setup()


# --------------------------------------------------------------------------------------------
# Synthetic task


def synthetic(**kwargs) -> SyntheticDataModule:
    options = {"train_size": 400, "test_size": 200, "val_size": 100, **LOADER, **kwargs}
    dm = SyntheticDataModule(**options)
    dm.setup()
    return dm


def test_synthetic_is_deterministic_for_a_seed():
    first, same, other = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert np.array_equal(first.test_set.images, same.test_set.images)
    assert np.array_equal(first.train_set.dataset.images, same.train_set.dataset.images)
    assert not np.array_equal(first.test_set.images, other.test_set.images)


def test_synthetic_shapes_classes_and_balance():
    dm = synthetic(num_classes=16, img_size=24)
    arrays = dm.train_set.dataset
    assert arrays.images.shape == (400, 24, 24, 3) and arrays.images.dtype == np.uint8
    counts = np.bincount(arrays.labels, minlength=16)
    assert counts.min() >= 25 and counts.max() - counts.min() <= 1
    assert len(set(dm.classes)) == 16
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 24, 24) and images.dtype == torch.float32 and labels.dtype == torch.int64


def test_synthetic_train_and_test_come_from_different_streams():
    dm = synthetic()
    train = dm.train_set.dataset.images.reshape(400, -1)
    test = dm.test_set.images.reshape(200, -1)
    assert not np.array_equal(train[:200], test)
    assert not {row.tobytes() for row in train} & {row.tobytes() for row in test}


def test_the_training_images_through_the_eval_transform_are_the_train_split_without_val():
    dm = synthetic()
    assert dm.train_eval_set.indices == dm.train_set.indices and not set(dm.train_set.indices) & set(dm.val_set.indices)
    first = dm.train_set.indices[0]
    image, label = dm.train_eval_set[0]
    torch.testing.assert_close(image, dm.val_set.dataset[first][0])  # the eval transform, as val images get it
    assert label == dm.val_set.dataset[first][1] and torch.equal(image, dm.train_eval_set[0][0])  # no randomness
    assert sum(len(labels) for _, labels in dm.train_eval_dataloader()) == 300  # 400 train - 100 val
    assert len(synthetic(val_size=0).train_eval_set) == 400


def test_synthetic_generation_is_vectorised():
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    images, _ = generate_images(4096, 10, 32, generator)
    assert images.shape == (4096, 32, 32, 3)
    assert time.perf_counter() - start < 2.0  # about 0.3 s on one CPU core


@pytest.mark.parametrize(
    ("key", "kwargs"), [("data.num_classes", {"num_classes": 1}), ("data.img_size", {"img_size": 8})]
)
def test_synthetic_rejects_bad_config(key, kwargs):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}:"):
        SyntheticDataModule(**kwargs)


def test_synthetic_task_is_learnable():
    """A tiny conv net trained for a few seconds on 512 images is far above chance on new ones."""
    torch.manual_seed(0)
    num_classes = 10
    generator = torch.Generator().manual_seed(0)

    def tensors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = generate_images(n, num_classes, 32, generator)
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(labels)

    (train_x, train_y), (test_x, test_y) = tensors(512), tensors(512)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(6):
        for batch in torch.randperm(512).split(64):
            loss = nn.functional.cross_entropy(net(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 4 / num_classes


# --------------------------------------------------------------------------------------------
# conf/data/*.yaml, composed as Hydra composes the `data` group, with stand-ins for the keys
# that train.yaml, recipe/ and hardware/ define.


def data_config(name: str, data_dir: Path, *overrides: str):
    return compose_data_config(name, data_dir, *overrides, batch_size=8)


@pytest.mark.parametrize(("name", "module_class"), [("cifar10", CIFAR10DataModule), ("cifar100", CIFAR100DataModule)])
def test_cifar_yaml_instantiates_and_loads(tmp_path, name, module_class):
    write_cifar(name, tmp_path / name)
    cfg = data_config(name, tmp_path, "data.val_size=10")
    dm = instantiate(cfg.data, _convert_="all")
    assert type(dm) is module_class
    assert dm.data_dir == tmp_path / name and dm.download is True
    assert dm.augment["hflip"] is True and dm.augment["crop_padding"] == 4
    dm.prepare_data()  # the files are complete, so nothing is downloaded
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 3, 32, 32)
    expected_std = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2675, 0.2565, 0.2761)}[name]
    assert dm.std == expected_std and dm.num_classes == CIFAR_LAYOUTS[name][-1]


def test_synthetic_yaml_instantiates_and_loads(tmp_path):
    dm = instantiate(data_config("synthetic", tmp_path).data, _convert_="all")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1536, 512, 512)
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 3, 32, 32)


def test_image_folder_yaml_needs_root_and_loads(tmp_path):
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        raw = compose(overrides=["+data=image_folder"])
    assert OmegaConf.is_missing(raw.data, "root") and OmegaConf.is_missing(raw.data, "num_classes")
    write_image_folder(tmp_path / "pets")
    cfg = data_config("image_folder", tmp_path, f"data.root={tmp_path / 'pets'}", "data.num_classes=3")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (11, 1)
    assert next(iter(dm.test_dataloader()))[0].shape == (6, 3, 32, 32)


def test_cifar10_jpg_yaml_points_at_the_shared_folder(tmp_path):
    dm = instantiate(data_config("cifar10_jpg", tmp_path).data, _convert_="all")
    assert type(dm) is ImageFolderDataModule
    assert dm.root == tmp_path / "cifar10-jpg" and dm.num_classes == 10 and dm.val_size == 5000
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.std == (0.2023, 0.1994, 0.2010)
