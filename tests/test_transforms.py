"""Train/eval transforms built from the recipe's augment block."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vitlab.datamodules import AUGMENT_DEFAULTS, build_eval_transform, build_train_transform
from vitlab.errors import ConfigError

from conftest import CONF_DIR, compose_data_config

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
SEED_RECIPE = {  # the Mini-ViT seed's augmentation (mini_vit spec 2.2)
    "hflip": True,
    "crop_padding": 4,
    "auto_augment": "cifar10",
    "random_erasing": 0.25,
}


def constant_image(value: int = 100, size: int = 32) -> torch.Tensor:
    return torch.full((3, size, size), value, dtype=torch.uint8)


def half_black_half_white(size: int = 32) -> torch.Tensor:
    image = torch.zeros((3, size, size), dtype=torch.uint8)
    image[:, :, size // 2 :] = 255
    return image


def test_eval_transform_normalises_constant_image():
    out = build_eval_transform(32, MEAN, STD, native_size=32)(constant_image(100))
    assert type(out) is torch.Tensor
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    expected = (100 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out, expected[:, None, None].expand(3, 32, 32), atol=1e-5)


def test_pil_and_tensor_inputs_give_the_same_eval_output():
    tensor = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pil = Image.fromarray(tensor.permute(1, 2, 0).numpy())
    transform = build_eval_transform(32, MEAN, STD, native_size=32)
    assert torch.allclose(transform(pil), transform(tensor), atol=1e-6)


def test_train_transform_without_augment_equals_eval():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    train = build_train_transform(None, 32, MEAN, STD, native_size=32)
    assert torch.equal(train(image), build_eval_transform(32, MEAN, STD, native_size=32)(image))


def test_seed_recipe_runs_on_tensors_and_pil():
    torch.manual_seed(0)
    transform = build_train_transform(SEED_RECIPE, 32, MEAN, STD, native_size=32)
    pil = Image.new("RGB", (32, 32), (10, 200, 30))
    for image in (constant_image(), pil):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_train_order_follows_the_seed():
    transform = build_train_transform(SEED_RECIPE, 64, MEAN, STD, native_size=32)
    names = [type(step).__name__ for step in transform.transforms]
    assert names == [
        "Resize",
        "RandomHorizontalFlip",
        "RandomCrop",
        "AutoAugment",
        "ToImage",
        "ToDtype",
        "Normalize",
        "RandomErasing",
        "ToPureTensor",
    ]


def test_rand_augment_is_built_with_its_settings():
    transform = build_train_transform({"rand_augment": {"num_ops": 2, "magnitude": 7}}, 32, MEAN, STD, 32)
    (rand_augment,) = [step for step in transform.transforms if type(step).__name__ == "RandAugment"]
    assert (rand_augment.num_ops, rand_augment.magnitude) == (2, 7)
    assert transform(constant_image()).shape == (3, 32, 32)


def test_resize_to_64_on_32_px_inputs():
    train = build_train_transform(SEED_RECIPE, 64, MEAN, STD, native_size=32)
    evaluate = build_eval_transform(64, MEAN, STD, native_size=32)
    assert train(constant_image()).shape == (3, 64, 64)
    assert evaluate(constant_image()).shape == (3, 64, 64)
    pil = Image.new("RGB", (32, 32))
    assert evaluate(pil).shape == (3, 64, 64)


def test_no_resize_when_native_size_matches():
    names = [type(step).__name__ for step in build_eval_transform(32, MEAN, STD, native_size=(32, 32)).transforms]
    assert "Resize" not in names


def test_random_erasing_with_probability_one_erases_with_noise():
    torch.manual_seed(0)
    transform = build_train_transform({"random_erasing": 1.0}, 32, MEAN, STD, native_size=32)
    clean = build_eval_transform(32, MEAN, STD, native_size=32)(constant_image())
    for _ in range(5):
        changed = (transform(constant_image()) - clean).abs() > 1e-4
        assert changed.any()
        # A rectangle, not every pixel: scale is at most 0.4 of the area.
        assert changed[0].float().mean() <= 0.45


def test_hflip_flips_some_images_and_not_others():
    torch.manual_seed(0)
    transform = build_train_transform({"hflip": True}, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), native_size=32)
    image = half_black_half_white()
    left_is_white = [bool(transform(image)[0, 0, 0] > 0.5) for _ in range(30)]
    assert any(left_is_white) and not all(left_is_white)


def test_crop_padding_shifts_in_zero_fill():
    torch.manual_seed(0)
    transform = build_train_transform({"crop_padding": 4}, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), native_size=32)
    outputs = [transform(constant_image(255)) for _ in range(20)]
    assert all(out.shape == (3, 32, 32) for out in outputs)
    assert any((out == 0).any() for out in outputs)


def test_defaults_cover_the_documented_keys():
    """The transforms take their keys and defaults from the recipe schema, where they are written once."""
    import dataclasses

    from vitlab.config import AugmentConfig

    assert AUGMENT_DEFAULTS == dataclasses.asdict(AugmentConfig())
    assert {"hflip", "crop_padding", "auto_augment", "rand_augment", "random_erasing", "random_erasing_scale",
            "random_erasing_ratio", "random_erasing_style", "random_resized_crop", "randaug_legacy"} == set(AUGMENT_DEFAULTS)


@pytest.mark.parametrize(
    ("augment", "key"),
    [
        ({"flip": True}, "recipe.augment.flip"),
        ({"auto_augment": "cifar100"}, "recipe.augment.auto_augment"),
        ({"auto_augment": "cifar10", "rand_augment": {"num_ops": 2, "magnitude": 9}}, "recipe.augment.rand_augment"),
        ({"rand_augment": {"num_ops": 2}}, "recipe.augment.rand_augment"),
        ({"rand_augment": {"num_ops": 2, "magnitude": 40}}, "recipe.augment.rand_augment.magnitude"),
        ({"crop_padding": -1}, "recipe.augment.crop_padding"),
        ({"random_erasing": 1.5}, "recipe.augment.random_erasing"),
        ({"random_erasing_scale": [0.5, 0.1]}, "recipe.augment.random_erasing_scale"),
        ({"hflip": "yes"}, "recipe.augment.hflip"),
    ],
)
def test_bad_augment_values_name_the_key(augment, key):
    with pytest.raises(ConfigError) as info:
        build_train_transform(augment, 32, MEAN, STD, native_size=32)
    message = str(info.value)
    assert message.startswith(f"{key}:") and "\n" not in message


#: Each data config's image size on disk where it is not ``img_size`` (a tuple: images of any size,
#: here one that is not square).
NATIVE = {"cifar100_64": 32, "imagenet100": (260, 300), "image_folder": (40, 48)}
#: The keys a data config leaves for the command line.
REQUIRED = {"image_folder": ["data.root=photos", "data.num_classes=3"]}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_predict_and_load_run_preprocess_as_evaluation_does(name, tmp_path):
    """For every data config: what ``vitlab-predict`` and ``vitlab.load_run`` give the network for an
    image file is what the DataModule's evaluation gives it for the same image in the dataset, so
    the two score it with the same logits."""
    from vitlab.api import eval_transform
    from vitlab.instantiate import build

    (tmp_path / "tiny-imagenet-200").mkdir()
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("".join(f"n{i:08d}\n" for i in range(200)))
    data = compose_data_config(name, tmp_path, *REQUIRED.get(name, [])).data
    size = NATIVE.get(name, int(data.img_size))
    height, width = (size, size) if isinstance(size, int) else size
    pixels = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=pixels, dtype=torch.uint8).numpy())
    datamodule = build(data)
    evaluation = datamodule._eval_transform(datamodule._native_size([(image, 0)]))
    predicted = eval_transform(data)(image)
    assert predicted.shape == (3, int(data.img_size), int(data.img_size))
    assert torch.equal(predicted, evaluation(image))
