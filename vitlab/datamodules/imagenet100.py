"""ImageNet-100: a 100-class subset of ImageNet-1k, from the Kaggle package or a plain class-folder tree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError, DataError

from .base import ImageDataModule
from .datasets import ImageFileDataset
from .images import list_images
from .tinyimagenet import IMAGENET_MEAN, IMAGENET_STD, _few, read_wnids

#: The shipped class list: CMC's ImageNet-100 (Tian et al.), one wnid per line.
CMC_CLASS_LIST = Path(__file__).with_name("imagenet100_classes.txt")

_LAYOUTS = (
    "either the Kaggle ImageNet-100 layout (<root>/train.X1 ... train.X4/<wnid>/*.JPEG, <root>/val.X/<wnid>/*.JPEG, "
    "<root>/Labels.json) or <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (a full ImageNet tree with "
    "class-folder val/, or a 100-class extract)"
)
_CLASS_LISTS = "auto, cmc, labels_json, folders, a text file with one wnid per line, or a list of wnids"


class ImageNet100DataModule(ImageDataModule):
    """ImageNet-100 at ``img_size`` (256 by default) from ``root``.

    Layouts (``layout: auto`` tells them apart by ``Labels.json`` / ``train.X*``):

    * ``kaggle``: ``train.X1..train.X4/<wnid>/`` (train), ``val.X/<wnid>/`` (test), ``Labels.json``;
    * ``folder``: ``<train_dir>/<wnid>/`` and ``<test_dir>/<wnid>/`` (``train`` / ``val``), either a
      full ImageNet tree (only the listed classes are read) or a pre-extracted 100-class folder.

    ``class_list`` picks the classes: ``cmc`` (the list shipped in ``imagenet100_classes.txt``),
    ``labels_json`` (the keys of ``<root>/Labels.json``, the clear-vit seed's classes), ``folders``
    (every class folder of the train split), a path to a wnid file, or a list; ``auto`` is
    ``labels_json`` for the Kaggle layout and ``cmc`` otherwise. Class index = position of the wnid
    in the **sorted** list. A listed class without a folder is a DataError naming it.

    Train transform: the recipe's augment block (``recipe=clear_vit``: RandomResizedCrop(img_size,
    scale 0.08-1, bilinear), flip, the seed's RandAugment, random erasing). Eval: resize to
    ``img_size x img_size`` (bilinear, aspect ratio not kept, no centre crop), as the seed. The
    official val split is the test split; validation is ``val_size`` images held out of train.
    """

    resize_interpolation = "bilinear"

    def __init__(
        self,
        root: str,
        layout: str = "auto",
        class_list: str | Sequence[str] = "auto",
        train_dir: str = "train",
        test_dir: str = "val",
        *,
        num_classes: int = 100,
        img_size: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_size: int | float = 5000,
        **kwargs: Any,
    ) -> None:
        if layout not in ("auto", "kaggle", "folder"):
            raise ConfigError(f"data.layout: expected auto, kaggle or folder, got {layout!r}")
        if not isinstance(class_list, str) and (
            not isinstance(class_list, Sequence) or not class_list or not all(isinstance(c, str) for c in class_list)
        ):
            raise ConfigError(f"data.class_list: expected {_CLASS_LISTS}; got {class_list!r}")
        super().__init__(
            num_classes=num_classes, img_size=img_size, mean=mean, std=std, val_size=val_size, **kwargs
        )
        self.root = Path(root).expanduser().resolve()
        self.layout = layout
        self.class_list = class_list if isinstance(class_list, str) else list(class_list)
        self.train_dir = train_dir
        self.test_dir = test_dir
        self._wnids: list[str] | None = None

    # ---------------------------------------------------------------------------------- layout

    def resolved_layout(self) -> str:
        if not self.root.is_dir():
            raise DataError(f"data.root: {self.root} is not a folder; expected {_LAYOUTS}")
        if self.layout != "auto":
            return self.layout
        if (self.root / "Labels.json").is_file() or any(self.root.glob("train.X*")):
            return "kaggle"
        return "folder"

    def _split_folders(self, train: bool) -> list[Path]:
        if self.resolved_layout() == "kaggle":
            folders = sorted(p for p in self.root.glob("train.X*") if p.is_dir()) if train else [self.root / "val.X"]
            name = "train.X1 ... train.X4" if train else "val.X"
        else:
            folders = [self.root / (self.train_dir if train else self.test_dir)]
            name = self.train_dir if train else self.test_dir
        folders = [folder for folder in folders if folder.is_dir()]
        if not folders:
            key = "data.train_dir" if train else "data.test_dir"
            raise DataError(f"data.root: no {name}/ folder in {self.root}; expected {_LAYOUTS} (or set {key})")
        return folders

    # ---------------------------------------------------------------------------------- classes

    def _labels_json(self) -> dict[str, str]:
        path = self.root / "Labels.json"
        if not path.is_file():
            raise DataError(f"data.class_list: labels_json needs {path} (the Kaggle layout); choose {_CLASS_LISTS}")
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"data.root: {path} is not valid JSON ({err}); expected {{wnid: name, ...}}") from err
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"data.root: {path} must hold a non-empty JSON object {{wnid: name, ...}}")
        return {str(k): str(v) for k, v in labels.items()}

    def _class_list(self) -> tuple[list[str], str]:
        """The wnids (unsorted) and a description of where they come from."""
        spec = self.class_list
        if not isinstance(spec, str):
            return list(spec), "data.class_list"
        if spec == "auto":
            spec = "labels_json" if self.resolved_layout() == "kaggle" else "cmc"
        if spec == "cmc":
            return read_wnids(CMC_CLASS_LIST, "data.class_list"), str(CMC_CLASS_LIST)
        if spec == "labels_json":
            return list(self._labels_json()), str(self.root / "Labels.json")
        if spec == "folders":
            folders = self._split_folders(train=True)
            return sorted({p.name for folder in folders for p in folder.iterdir() if p.is_dir()}), (
                f"the class folders of {', '.join(map(str, folders))}"
            )
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.class_list: {spec!r} is not a file; expected {_CLASS_LISTS}")
        return read_wnids(path.resolve(), "data.class_list"), str(path.resolve())

    @property
    def wnids(self) -> list[str]:
        """The class wnids in label order (sorted)."""
        if self._wnids is None:
            wnids, source = self._class_list()
            if len(set(wnids)) != len(wnids):
                raise ConfigError(f"data.class_list: {source} lists some wnids more than once")
            if len(wnids) != self.num_classes:
                raise ConfigError(
                    f"data.num_classes: is {self.num_classes} but {source} lists {len(wnids)} classes; "
                    f"set data.num_classes={len(wnids)}"
                )
            self._wnids, self._source = sorted(wnids), source
        return self._wnids

    @property
    def classes(self) -> list[str]:
        return self.wnids

    @property
    def class_names(self) -> list[str]:
        """Names from ``Labels.json`` where it exists, else the wnids."""
        names = self._labels_json() if (self.root / "Labels.json").is_file() else {}
        return [names.get(wnid, wnid) for wnid in self.wnids]

    # ---------------------------------------------------------------------------------- splits

    def _load_split(self, train: bool) -> ImageFileDataset:
        wnids = self.wnids
        folders = self._split_folders(train)
        samples: list[tuple[Path, int]] = []
        missing = []
        for label, wnid in enumerate(wnids):
            class_folders = [folder / wnid for folder in folders if (folder / wnid).is_dir()]
            if not class_folders:
                missing.append(wnid)
                continue
            files = [path for folder in class_folders for path in list_images(folder)]
            if not files:
                raise DataError(
                    f"data.root: class folder {class_folders[0]} holds no images; expected <wnid>/*.JPEG; add the "
                    "images or remove the class from data.class_list"
                )
            samples += [(path, label) for path in files]
        if missing:
            where = ", ".join(str(folder) for folder in folders)
            loose = [folder for folder in folders if list_images(folder)]
            if loose:
                raise DataError(
                    f"data.root: {loose[0]} holds loose images; sort them into class folders <wnid>/ (for ImageNet's "
                    "val, with the devkit's ground truth); expected " + _LAYOUTS
                )
            raise DataError(
                f"data.root: {len(missing)} of the {len(wnids)} classes of {self._source} have no folder in {where} "
                f"(missing: {_few(missing)}); expected {_LAYOUTS}; or choose data.class_list ({_CLASS_LISTS})"
            )
        return ImageFileDataset(samples, wnids)

    def _native_size(self, split: Any) -> None:
        return None  # ImageNet photos differ in size: always resize (eval) or random-resized-crop (train)
