"""The clear-vit seed's custom RandAugment (``randaug_legacy``)."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from vitlab.datamodules.randaug_legacy import LEGACY_OPS, LegacyRandAugment


def _image(size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _to_tensor(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1)


def test_sixteen_ops():
    assert len(LEGACY_OPS) == len(set(LEGACY_OPS)) == 16


@pytest.mark.parametrize("op", LEGACY_OPS)
def test_each_op_gives_the_same_result_on_pil_and_uint8_tensors(op):
    aug = LegacyRandAugment()
    img = _image()
    on_tensor = aug.apply_op(img, op)
    on_pil = aug.apply_op(Image.fromarray(img.permute(1, 2, 0).numpy()), op)
    assert isinstance(on_pil, Image.Image) and on_tensor.dtype == torch.uint8 and on_tensor.shape == img.shape
    # PIL and torchvision round the blend of the enhance ops differently by at most one level
    assert (on_tensor.int() - _to_tensor(on_pil).int()).abs().max() <= 1


def test_fixed_magnitudes_and_signs():
    aug = LegacyRandAugment()
    img = _image()
    shifted = aug.apply_op(img, "translate_x")
    assert torch.equal(shifted[:, :, 25:], img[:, :, :15]) and shifted[:, :, :25].eq(0).all()  # +25 px, right
    shifted = aug.apply_op(img, "translate_y")
    assert torch.equal(shifted[:, 25:], img[:, :15])  # +25 px, down
    levels = torch.tensor([0, 7, 8, 177, 178, 255], dtype=torch.uint8).view(1, 1, 6).expand(3, 1, 6)
    assert aug.apply_op(levels, "solarize")[0, 0].tolist() == [0, 7, 8, 177, 77, 0]  # threshold 178
    assert aug.apply_op(levels, "posterize")[0, 0].tolist() == [0, 0, 8, 176, 176, 248]  # 5 bits
    assert aug.apply_op(levels, "invert")[0, 0].tolist() == [255, 248, 247, 78, 77, 0]
    # solarize_add: brighten x1.3 (137 -> 178) then solarize at 178
    assert aug.apply_op(torch.full((3, 1, 2), 137, dtype=torch.uint8), "solarize_add")[0, 0].tolist() == [77, 77]
    assert torch.equal(aug.apply_op(img, "rotate"), F.rotate(img, 9.0))  # +9 degrees
    assert torch.equal(aug.apply_op(img, "brightness"), F.adjust_brightness(img, 1.3))
    assert torch.equal(aug.apply_op(img, "color"), F.adjust_saturation(img, 1.3))
    # the seed's shear is 0.3 *degrees*: almost nothing moves (tan 0.3 deg * 40 px = 0.2 px)
    assert torch.equal(aug.apply_op(img, "shear_x"), img) and torch.equal(aug.apply_op(img, "identity"), img)
    # float tensors use the threshold on the 0-1 scale
    as_float = levels.float() / 255
    torch.testing.assert_close(aug.apply_op(as_float, "solarize"), aug.apply_op(levels, "solarize").float() / 255)


def test_ops_are_drawn_with_replacement_and_invert_half_the_time(monkeypatch):
    aug = LegacyRandAugment(num_ops=3)
    applied: list[list[str]] = []

    def record(img, op):
        applied[-1].append(op)
        return img

    monkeypatch.setattr(aug, "apply_op", record)
    torch.manual_seed(0)
    draws = 2000
    for _ in range(draws):
        applied.append([])
        aug(_image(8))
    counts = Counter(op for ops in applied for op in ops)
    assert set(counts) == set(LEGACY_OPS)
    assert any(len(set(ops)) < len(ops) for ops in applied)  # the same op twice in one image
    expected = 3 * draws / 16
    assert all(abs(counts[op] - expected) < 0.25 * expected for op in LEGACY_OPS if op != "invert")
    assert 0.3 * expected < counts["invert"] < 0.7 * expected  # drawn, then applied with p = 0.5


def test_forward_on_pil_tensor_and_pairs_and_reproducible_seeding():
    aug = LegacyRandAugment()
    pil = Image.fromarray(_image().permute(1, 2, 0).numpy())
    assert isinstance(aug(pil), Image.Image)
    torch.manual_seed(3)
    a = aug(_image())
    torch.manual_seed(3)
    assert torch.equal(a, aug(_image()))
    out, label = aug(_image(), 7)
    assert out.shape == (3, 40, 40) and label == 7


def test_bad_num_ops():
    with pytest.raises(ValueError, match="num_ops"):
        LegacyRandAugment(num_ops=0)


def test_recipe_key_puts_it_after_the_flip_and_excludes_other_policies():
    from vitlab.datamodules import build_train_transform
    from vitlab.errors import ConfigError

    augment = {"random_resized_crop": [0.08, 1.0], "hflip": True, "randaug_legacy": True, "random_erasing": 0.25}
    pipeline = build_train_transform(augment, 64, (0.5,) * 3, (0.5,) * 3, native_size=None)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "LegacyRandAugment"]
    pil = Image.fromarray(_image(80).permute(1, 2, 0).numpy())
    for image in (pil, _image(80)):
        out = pipeline(image)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    norm = ((0.5,) * 3, (0.5,) * 3)
    assert "LegacyRandAugment" not in [type(t).__name__ for t in build_train_transform({}, 32, *norm, 32).transforms]
    both = {"randaug_legacy": True, "rand_augment": {"num_ops": 2, "magnitude": 9}}
    with pytest.raises(ConfigError, match="randaug_legacy: cannot be combined with recipe.augment.rand_augment"):
        build_train_transform(both, 32, *norm, 32)
    with pytest.raises(ConfigError, match="recipe.augment.randaug_legacy: expected true or false"):
        build_train_transform({"randaug_legacy": "yes"}, 32, *norm, 32)
