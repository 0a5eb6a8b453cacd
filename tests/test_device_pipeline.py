"""data.pipeline=device: the uint8 cache, the same split/sampler/resume semantics as the workers
pipeline, and the same augmentation distribution (statistical tests against the workers pipeline)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from conftest import compose_config
from vitlab.datamodules import ImageFolderDataModule, RepeatedAugmentationSampler
from vitlab.datamodules.device_pipeline import (
    BatchRandomErasing,
    DeviceAugment,
    Generators,
    PerSampleAutoAugment,
    PerSampleLegacyRandAugment,
    PerSampleRandAugment,
)
from vitlab.datamodules.randaug_legacy import LegacyRandAugment
from vitlab.datamodules.transforms import build_train_transform
from vitlab.checkpoint import load_checkpoint
from vitlab.errors import ConfigError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def write_cifar_jpg(root: Path, train: int = 6, test: int = 2, seed: int = 0, size: int = 32) -> None:
    """A tiny copy of the cifar10-jpg layout: <root>/{train,test}/<CIFAR-10 class>/NNNN.jpg, 32 px noisy colours."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for name in CIFAR10_CLASSES:
            for i in range(count):
                base = rng.integers(0, 256, 3)
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                path = root / split / name / f"{i:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, quality=90)


def folder_module(root: Path, cache: Path, **kwargs) -> ImageFolderDataModule:
    options = dict(num_classes=10, img_size=32, val_size=10, batch_size=8, num_workers=0, pin_memory=False,
                   persistent_workers=False, pipeline="device", cache_dir=str(cache),
                   augment={"hflip": True, "crop_padding": 4, "auto_augment": "cifar10", "random_erasing": 0.25},
                   mean=(0.49, 0.48, 0.45), std=(0.2, 0.2, 0.2))
    return ImageFolderDataModule(str(root), **{**options, **kwargs})


@pytest.fixture
def jpg_root(tmp_path) -> Path:
    write_cifar_jpg(tmp_path / "cifar10-jpg")
    return tmp_path / "cifar10-jpg"


def _batches(dm, count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = dm.train_dataloader()
    out = []
    for step, batch in enumerate(loader):
        if count is not None and step == count:
            break
        out.append(dm.on_after_batch_transfer(batch, 0))
    return out


# ----------------------------------------------------------------------------------------- the cache
def test_cache_is_built_once_holds_the_decoded_pixels_and_is_reused(jpg_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vitlab.datamodules.tensor_cache")
    dm = folder_module(jpg_root, tmp_path / "cache")
    dm.setup()
    (train_npy,) = (tmp_path / "cache").glob("ImageFolderDataModule-train-*[0-9a-f].npy")
    cached = np.load(train_npy)
    assert cached.shape == (60, 32, 32, 3) and cached.dtype == np.uint8
    first = sorted((jpg_root / "train" / "airplane").iterdir())[0]
    assert np.array_equal(cached[0], np.asarray(Image.open(first).convert("RGB")))
    assert np.array_equal(np.load(train_npy.with_suffix(".labels.npy")), np.repeat(np.arange(10), 6))
    assert "decoded once" in caplog.text
    built = train_npy.stat().st_mtime_ns

    caplog.clear()
    again = folder_module(jpg_root, tmp_path / "cache")
    again.setup()
    assert train_npy.stat().st_mtime_ns == built
    assert "read from the cache" in caplog.text and "decoded once" not in caplog.text
    # Validation reads the same decoded pixels as the workers pipeline decodes from the files.
    workers = folder_module(jpg_root, tmp_path / "unused", pipeline="workers")
    workers.setup()
    for a, b in zip(again.val_dataloader(), workers.val_dataloader(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (tmp_path / "unused").exists()


def test_stale_and_corrupt_caches_are_rebuilt_with_one_line(jpg_root, tmp_path, caplog):
    folder_module(jpg_root, tmp_path / "cache").setup()
    (train_npy,) = (tmp_path / "cache").glob("ImageFolderDataModule-train-*[0-9a-f].npy")

    changed = sorted((jpg_root / "train" / "airplane").iterdir())[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed, quality=95)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    caplog.set_level(logging.INFO, logger="vitlab.datamodules.tensor_cache")
    folder_module(jpg_root, tmp_path / "cache").setup()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stale" in warnings[0].getMessage() and "rebuilding" in warnings[0].getMessage()
    assert np.load(train_npy)[0, 0, 0, 0] > 200  # the new, red image

    caplog.clear()
    train_npy.write_bytes(train_npy.read_bytes()[:1000])  # a truncated file
    dm = folder_module(jpg_root, tmp_path / "cache")
    dm.setup()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0].getMessage(), caplog.text
    assert np.load(train_npy).shape == (60, 32, 32, 3)
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_images_of_different_sizes_are_resized_when_cached_and_the_size_keys_the_cache(tmp_path):
    for i, size in enumerate((32, 40, 24)):
        for split in ("train", "test"):
            for name in CIFAR10_CLASSES[:2]:
                path = tmp_path / "mixed" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size, size), (10 * i, 100, 200)).save(path)
    dm = folder_module(tmp_path / "mixed", tmp_path / "cache", num_classes=2, val_size=0, batch_size=2)
    dm.setup()
    x, y = _batches(dm, 1)[0]
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (2,)
    folder_module(tmp_path / "mixed", tmp_path / "cache", num_classes=2, val_size=0, img_size=16).setup()
    shapes = sorted(np.load(p, mmap_mode="r").shape for p in (tmp_path / "cache").glob("*-train-*[0-9a-f].npy"))
    assert shapes == [(6, 16, 16, 3), (6, 32, 32, 3)]


def test_an_unwritable_cache_dir_is_one_config_line(jpg_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception, match="data.cache_dir: cannot write"):
        folder_module(jpg_root, blocker / "cache").setup()


def test_bad_pipeline_settings_are_config_errors(jpg_root, tmp_path):
    with pytest.raises(ConfigError, match="data.pipeline: unknown pipeline 'gpu'; use workers or device"):
        folder_module(jpg_root, tmp_path, pipeline="gpu")
    with pytest.raises(ConfigError, match="data.pipeline: device does not support recipe.augment.random_resized_crop"):
        folder_module(jpg_root, tmp_path, augment={"random_resized_crop": [0.08, 1.0]})
    with pytest.raises(ConfigError, match="random_resized_crop"):
        DeviceAugment({"random_resized_crop": [0.08, 1.0]}, 32, **IDENTITY, native_size=(32, 32))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_every_small_dataset_trains_through_the_device_pipeline(tmp_path, name):
    from test_datamodules import write_cifar
    from test_datasets import data_config, write_svhn, write_tinyimagenet

    overrides = ["data.pipeline=device", "data.val_size=8", "data.download=false"]
    if name.startswith("cifar"):
        write_cifar(name, tmp_path / name)
    elif name == "svhn":
        write_svhn(tmp_path / "svhn", "train", 50)
        write_svhn(tmp_path / "svhn", "test", 20, offset=3)
    else:
        write_tinyimagenet(tmp_path)
        overrides.append("data.num_classes=4")
    dm = data_config(name, tmp_path, *overrides)
    dm.setup()
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (4, 3, dm.img_size, dm.img_size) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < dm.num_classes
    # Image files are decoded once into the cache under paths.data_dir; array datasets need no file.
    assert bool(list((tmp_path / "cache").glob("*.npy"))) == (name == "tinyimagenet")


def test_resize_for_larger_inputs_matches_the_workers_pipeline_pixel_for_pixel():
    images = _fixture_images(4)
    norm = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}
    workers = build_train_transform({}, 64, **norm, native_size=(32, 32))
    expected = torch.stack([workers(image) for image in images])
    got = DeviceAugment({}, 64, **norm, native_size=(32, 32))(images, Generators(0, 0))
    assert got.shape == (4, 3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- the same semantics
def test_device_batches_follow_the_workers_split_sampler_and_labels(jpg_root, tmp_path):
    common = dict(repeated_aug=2, seed=3, batch_size=10)
    device = folder_module(jpg_root, tmp_path / "cache", **common)
    workers = folder_module(jpg_root, tmp_path / "cache", pipeline="workers", **common)
    device.setup(), workers.setup()
    got, expected = _batches(device), [b for b in workers.train_dataloader()]
    assert len(got) == len(expected) == (50 * 2) // 10
    for (x, y), (wx, wy) in zip(got, expected, strict=True):
        assert torch.equal(y, wy)  # same sampler order over the same held-out split
        assert x.shape == wx.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    seen = torch.cat([y for _, y in got])
    expected_labels = torch.cat([y for _, y in expected])
    assert torch.equal(torch.bincount(seen, minlength=10), torch.bincount(expected_labels, minlength=10))


def test_each_rank_takes_its_share_with_its_own_augmentation_stream(jpg_root, tmp_path):
    dm = folder_module(jpg_root, tmp_path / "cache", augment={"hflip": True, "crop_padding": 4}, batch_size=5)
    dm.setup()
    positions, streams = [], []
    for rank in (0, 1):
        sampler = RepeatedAugmentationSampler(len(dm.train_set), repeats=1, seed=0, num_replicas=2, rank=rank)
        loader = dm._device_train_dataloader(sampler, rank)
        streams.append(dm._device_pipeline.generators.params.get_state())
        positions.append(torch.cat(list(loader)))
    assert len(positions[0]) == len(positions[1]) == 25
    assert sorted(torch.cat(positions).tolist()) == list(range(50))  # disjoint shares of one epoch order
    assert torch.equal(streams[1], Generators(0, 1).params.get_state())
    assert not torch.equal(streams[0], streams[1])


def test_state_dict_continues_the_augmentation_stream_exactly(jpg_root, tmp_path):
    dm = folder_module(jpg_root, tmp_path / "cache")
    dm.setup()
    loader = dm.train_dataloader()
    batches = iter(loader)
    dm.on_after_batch_transfer(next(batches), 0)
    state = dm.state_dict()
    assert set(state) == {"device_pipeline"} and "noise" in state["device_pipeline"][0]
    position_batch = next(batches)
    expected = dm.on_after_batch_transfer(position_batch, 0)

    resumed = folder_module(jpg_root, tmp_path / "cache")
    resumed.setup()
    resumed.load_state_dict(state)
    resumed.train_dataloader()
    got = resumed.on_after_batch_transfer(position_batch, 0)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    fresh = folder_module(jpg_root, tmp_path / "cache")
    fresh.setup()
    fresh.train_dataloader()
    assert not torch.equal(fresh.on_after_batch_transfer(position_batch, 0)[0], expected[0])


# --------------------------------------------------------------------------- the same distribution
N = 3000


def _workers(augment: dict, images: torch.Tensor, count: int, mean=IDENTITY["mean"], std=IDENTITY["std"]):
    """``count`` images through the workers pipeline's train transform, one at a time."""
    transform = build_train_transform(augment, images.shape[-1], mean, std, tuple(images.shape[-2:]))
    torch.manual_seed(1)
    return torch.stack([transform(images[i % len(images)].clone()) for i in range(count)])


def _device(augment: dict, images: torch.Tensor, count: int, mean=IDENTITY["mean"], std=IDENTITY["std"]):
    """``count`` images through the device pipeline, in batches of 500."""
    pipeline = DeviceAugment(augment, images.shape[-1], mean, std, tuple(images.shape[-2:]))
    generators = Generators(seed=1, rank=0)
    index = torch.arange(count) % len(images)
    return torch.cat([pipeline(images[chunk], generators) for chunk in index.split(500)])


def _coordinate_image(size: int = 32) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows + 1, cols + 1, torch.full_like(rows, 128)]).to(torch.uint8)[None]


def _offsets_and_flips(out: torch.Tensor, size: int = 32, pad: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = (out * 255).round().to(torch.int64).numpy()
    oy, ox, flipped = [], [], []
    for image in values:
        r, c = np.argwhere((image[0] > 0) & (image[1] > 0))[0]
        oy.append(image[0, r, c] - 1 - r + pad)
        row = image[1, r]
        valid = row[row > 0]
        flip = len(valid) > 1 and valid[1] < valid[0]
        flipped.append(flip)
        ox.append(pad + size - image[1, r, c] - c if flip else image[1, r, c] - 1 - c + pad)
    return np.array(oy), np.array(ox), np.array(flipped)


def _same_distribution(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of a chi-square test that two samples of categories come from one distribution."""
    categories = sorted(set(a.tolist()) | set(b.tolist()))
    table = np.array([[np.sum(a == c) for c in categories], [np.sum(b == c) for c in categories]])
    return stats.chi2_contingency(table).pvalue


def test_crop_offsets_and_flip_rate_match_the_workers_pipeline():
    augment = {"hflip": True, "crop_padding": 4}
    wy, wx, wflip = _offsets_and_flips(_workers(augment, _coordinate_image(), N))
    dy, dx, dflip = _offsets_and_flips(_device(augment, _coordinate_image(), N))
    assert set(dy.tolist()) == set(wy.tolist()) == set(range(9))  # every offset 0..2*pad
    assert _same_distribution(wy, dy) > 1e-3 and _same_distribution(wx, dx) > 1e-3
    assert abs(wflip.mean() - 0.5) < 0.04 and abs(dflip.mean() - wflip.mean()) < 0.04
    # The test can fail: offsets drawn from 1..8 only are told apart.
    assert _same_distribution(wx, np.clip(dx, 1, 8)) < 1e-6


def _record_ops(monkeypatch, cls, method: str) -> list[tuple]:
    calls: list[tuple] = []

    def record(self, image, *args, **kwargs):
        key = (args[0], round(float(args[1]), 5) + 0.0)  # (transform_id, magnitude); + 0.0 makes -0.0 plain 0.0
        calls.extend([key] * (image.shape[0] if image.ndim == 4 else 1))
        return image

    monkeypatch.setattr(cls, method, record)
    return calls


def _op_samples(calls: list[tuple]) -> np.ndarray:
    """One category per applied op: its name and signed magnitude, e.g. ``Rotate:-20.0``."""
    return np.array([f"{op}:{magnitude}" for op, magnitude in calls])


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])
def test_auto_augment_ops_and_magnitudes_match_the_workers_pipeline(monkeypatch, policy):
    calls = _record_ops(monkeypatch, v2.AutoAugment, "_apply_image_or_video_transform")
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    workers = v2.AutoAugment(v2.AutoAugmentPolicy(policy))
    torch.manual_seed(0)
    for _ in range(N):
        workers(image)
    expected, calls[:] = _op_samples(calls), []
    PerSampleAutoAugment(policy)(image.expand(N, -1, -1, -1), torch.Generator().manual_seed(0))
    got = _op_samples(calls)
    assert abs(len(got) - len(expected)) < 0.05 * len(expected)  # how often an op's coin says yes
    assert _same_distribution(expected, got) > 1e-3
    # Power check: the same draws with every magnitude's sign dropped are told apart.
    unsigned = np.array([s.replace(":-", ":") for s in got])
    assert _same_distribution(expected, unsigned) < 1e-6


def test_rand_augment_ops_and_magnitudes_match_the_workers_pipeline(monkeypatch):
    calls = _record_ops(monkeypatch, v2.RandAugment, "_apply_image_or_video_transform")
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    workers = v2.RandAugment(num_ops=2, magnitude=7)
    torch.manual_seed(0)
    for _ in range(N):
        workers(image)
    expected, calls[:] = _op_samples(calls), []
    PerSampleRandAugment(2, 7)(image.expand(N, -1, -1, -1), torch.Generator().manual_seed(0))
    got = _op_samples(calls)
    assert len(got) == len(expected) == 2 * N
    assert len(set(got.tolist())) == len(set(expected.tolist())) > 14  # the signed ops appear with both signs
    assert _same_distribution(expected, got) > 1e-3


def test_legacy_rand_augment_ops_match_the_workers_pipeline(monkeypatch):
    calls: list[str] = []

    def record(self, image, op):
        calls.extend([op] * (image.shape[0] if image.ndim == 4 else 1))
        return image

    monkeypatch.setattr(LegacyRandAugment, "apply_op", record)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    workers = LegacyRandAugment()
    torch.manual_seed(0)
    for _ in range(N):
        workers(image)
    expected, calls[:] = np.array(calls), []
    PerSampleLegacyRandAugment()(image.expand(N, -1, -1, -1), torch.Generator().manual_seed(0))
    got = np.array(calls)
    assert abs(np.mean(expected == "invert") - np.mean(got == "invert")) < 0.01
    assert _same_distribution(expected, got) > 1e-3


def _erased_boxes(out: torch.Tensor, fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = (out != fill).any(dim=1)  # B x H x W
    erased = mask.flatten(1).any(1)
    heights = mask.any(dim=2).sum(1)[erased].numpy()
    widths = mask.any(dim=1).sum(1)[erased].numpy()
    return erased.numpy(), heights, widths


def test_random_erasing_rate_area_aspect_and_noise_match_the_workers_pipeline():
    p, scale, ratio = 0.25, (0.02, 0.4), (0.3, 3.3)
    images = torch.full((3, 32, 32), 5.0)
    workers = v2.RandomErasing(p=p, scale=scale, ratio=ratio, value="random")
    torch.manual_seed(0)
    wout = torch.stack([workers(images.clone()) for _ in range(4 * N)])
    erasing = BatchRandomErasing(p, scale, ratio)
    generator, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    dout = torch.cat([erasing(images.expand(1000, -1, -1, -1), generator, noise) for _ in range(4 * N // 1000)])
    (werased, wh, ww), (derased, dh, dw) = _erased_boxes(wout, 5.0), _erased_boxes(dout, 5.0)
    assert abs(werased.mean() - p) < 0.03 and abs(derased.mean() - werased.mean()) < 0.03
    assert stats.ks_2samp(wh * ww, dh * dw).pvalue > 1e-3  # erased area
    assert stats.ks_2samp(np.log(wh / ww), np.log(dh / dw)).pvalue > 1e-3  # aspect
    assert (wh < 32).all() and (dh < 32).all() and (ww < 32).all() and (dw < 32).all()
    noise_values = dout[dout != 5.0]
    assert abs(float(noise_values.mean())) < 0.02 and abs(float(noise_values.std()) - 1) < 0.02
    # Power check: Kornia-style clipping of oversized boxes instead of retrying is told apart.
    clipped = np.minimum(np.round(np.sqrt(wh * ww * 1.6)), 31)
    assert stats.ks_2samp(wh * ww, clipped * ww).pvalue < 1e-6


def _fixture_images(count: int = 48, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = torch.rand(count, 3, 1, 1, generator=generator) * 180
    slope = torch.rand(count, 3, 1, 1, generator=generator) * 70
    noise = torch.randn(count, 3, size, size, generator=generator) * 20
    return (base + slope * ramp[None, None, :, None] + noise).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("recipe", ["mini_vit", "outgrid"])
def test_normalised_pixel_statistics_match_the_workers_pipeline(recipe):
    from omegaconf import OmegaConf

    from conftest import CONF_DIR

    augment = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "recipe" / f"{recipe}.yaml").augment)
    norm = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}
    images = _fixture_images()
    w, d = _workers(augment, images, 1500, **norm), _device(augment, images, 1500, **norm)
    assert w.shape == d.shape == (1500, 3, 32, 32)
    for channel in range(3):
        # Per-sample channel means and spreads: two samples of 1,500 from one distribution (Welch's t-test).
        wc, dc = w[:, channel].flatten(1), d[:, channel].flatten(1)
        assert stats.ttest_ind(wc.mean(1), dc.mean(1), equal_var=False).pvalue > 1e-3, channel
        assert stats.ttest_ind(wc.std(1), dc.std(1), equal_var=False).pvalue > 1e-3, channel
        assert abs(float(wc.mean() - dc.mean())) < 0.06 and abs(float(wc.std() / dc.std()) - 1) < 0.03
    # Power check: a normalisation off by a tenth of a standard deviation is told apart.
    assert stats.ttest_ind(w[:, 0].flatten(1).mean(1), d[:, 0].flatten(1).mean(1) + 0.1).pvalue < 1e-3
    # The share of zero-filled (padding / shifted-in) pixels, which the crop and the geometric ops decide.
    zero = torch.tensor(norm["mean"])[None, :, None, None].neg() / torch.tensor(norm["std"])[None, :, None, None]
    assert abs(float(((w - zero).abs() < 1e-4).float().mean() - ((d - zero).abs() < 1e-4).float().mean())) < 0.01


def test_an_op_applied_to_a_group_gives_the_pixels_the_workers_pipeline_gives_each_image():
    images = _fixture_images(6)
    auto = PerSampleAutoAugment("cifar10")
    for key in [("Rotate", -20.0), ("Equalize", 0.0), ("Posterize", 5.0), ("Sharpness", 0.5), ("TranslateX", 4.0)]:
        t = auto.transform
        single = torch.stack([t._apply_image_or_video_transform(im, *key, interpolation=t.interpolation, fill=t._fill)
                              for im in images])
        assert torch.equal(auto.apply(images, key), single), key


# ----------------------------------------------------------------------------------- exact resume
RESUME = ["experiment=cifar10_mini_vit", "data=cifar10_jpg", "data.pipeline=device", "hardware=cpu",
          "hardware.num_workers=0", "data.val_size=10", "recipe.batch_size=16", "recipe.epochs=3",
          "recipe.schedule.warmup_epochs=1", "recipe.repeated_aug=1", "model.net.depth=1",
          "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=1", "trainer.log_every_n_steps=1",
          "trainer.deterministic=true", "test=false", "callbacks.progress_bar.kind=tqdm", "logger=csv"]


def test_device_pipeline_resume_equals_the_uninterrupted_run(tmp_path, one_thread):
    """experiment=cifar10_mini_vit data=cifar10_jpg data.pipeline=device: 2 epochs + 1 resumed from
    last.ckpt end with the weights of 3 epochs straight (AutoAugment, erasing, CutMix, dropout on)."""
    from vitlab.training import train

    write_cifar_jpg(tmp_path / "data" / "cifar10-jpg", train=5, test=1)
    # callbacks.throughput measures the CPU's matmul peak once per process from the global RNG, so the
    # first of several runs in one process would start its dropout stream apart (the kill test below
    # runs each part in a fresh process and keeps it).
    common = [*RESUME, f"paths.data_dir={tmp_path / 'data'}", "callbacks.throughput=null"]
    train(compose_config(common, output_dir=tmp_path / "straight"))
    train(compose_config([*common, "trainer.max_epochs=2"], output_dir=tmp_path / "first"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(compose_config([*common, f"ckpt_path={first}"], output_dir=tmp_path / "resumed"))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3 * 2  # 50 - 10 held out = 2 batches of 16
    assert torch.equal(resumed["ImageFolderDataModule"]["device_pipeline"][0]["params"],
                       straight["ImageFolderDataModule"]["device_pipeline"][0]["params"])
    for name, weight in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    assert len(list((tmp_path / "data" / "cache").glob("*.npy"))) == 4  # train + test, pixels + labels


@pytest.mark.slow
def test_killed_device_pipeline_run_resumes_to_the_same_final_metrics(tmp_path):
    """SIGKILL in the third epoch, restart with run_dir=: the same metrics and weights as a straight run."""
    from test_resume import _finish, _saved_epoch, _start

    write_cifar_jpg(tmp_path / "data" / "cifar10-jpg", train=8, test=2)
    run = [*[o for o in RESUME if not o.startswith(("test=", "recipe.epochs"))], "recipe.epochs=4",
           f"paths.data_dir={tmp_path / 'data'}", "paths.log_dir=logs"]
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
    straight = _start(tmp_path / "straight", *run)
    _finish(straight)  # one at a time: both would race to build the shared cache
    killed = _start(tmp_path / "killed", *run)
    runs = tmp_path / "killed" / "logs" / "cifar10_mini_vit" / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        last = next(runs.glob("*/checkpoints/last.ckpt"), None) if runs.is_dir() else None
        if last is not None and (_saved_epoch(last) or 0) >= 1:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "metrics.json").exists()
    _finish(_start(tmp_path / "killed", f"run_dir={run_dir}"))
    (straight_dir,) = (tmp_path / "straight" / "logs" / "cifar10_mini_vit" / "runs").iterdir()
    expected = json.loads((straight_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("epochs", "global_step", "val/top1_best", "test/top1", "test/loss"):
        assert got[key] == expected[key], (key, got[key], expected[key])
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(straight_dir / "checkpoints" / "last.ckpt")
    for name, weight in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name
