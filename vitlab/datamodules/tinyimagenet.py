"""TinyImageNet-200 (the official cs231n zip layout) and TinyImageNet-C (evaluation only).

Class index = position of the wnid in ``wnids.txt`` **sorted** alphabetically (the official file is
not sorted; torchvision's ImageFolder over ``train/`` gives the same order). TinyImageNet-C uses the
same mapping, read from the training set's ``wnids.txt``, so a model trained on TinyImageNet-200 is
scored against the right logits even where -C lacks some classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from vitlab.errors import ConfigError, DataError

from .base import ImageDataModule
from .datasets import ImageFileDataset, with_transform
from .images import list_images
from .download import download, extract_zip

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINYIMAGENET_FOLDER = "tiny-imagenet-200"
_TIN_LAYOUT = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"

#: The 15 standard corruptions of ImageNet-C / TinyImageNet-C, in the order of the benchmark's tables
#: (noise, blur, weather, digital); :attr:`TinyImageNetCDataModule.names` follows it.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
_TINC_LAYOUT = "<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG (the TinyImageNet-C release)"


def _few(items: Sequence[Any], count: int = 5) -> str:
    shown = ", ".join(str(item) for item in list(items)[:count])
    return shown + (f", ... ({len(items)} in all)" if len(items) > count else "")


def read_wnids(path: Path, key: str) -> list[str]:
    """Wnids listed one per line in ``path`` (blank lines and ``#`` lines skipped), sorted."""
    if not path.is_file():
        raise DataError(f"{key}: no wnid list at {path}; expected a text file with one wnid per line")
    wnids = [line.strip() for line in path.read_text().splitlines()]
    wnids = [wnid for wnid in wnids if wnid and not wnid.startswith("#")]
    if not wnids:
        raise DataError(f"{key}: {path} lists no wnids; expected one wnid per line")
    duplicates = sorted({wnid for wnid in wnids if wnids.count(wnid) > 1})
    if duplicates:
        raise DataError(f"{key}: {path} lists {_few(duplicates)} more than once; each wnid must appear once")
    return sorted(wnids)


def _check_num_classes(num_classes: int, wnids: Sequence[str], source: Path | str) -> None:
    if num_classes != len(wnids):
        raise ConfigError(
            f"data.num_classes: is {num_classes} but {source} lists {len(wnids)} classes; "
            f"set data.num_classes={len(wnids)}"
        )


class TinyImageNetDataModule(ImageDataModule):
    """TinyImageNet-200 from ``<data_dir>/tiny-imagenet-200`` (or ``data_dir`` itself when it holds
    ``wnids.txt``), in the layout of the official zip.

    Train split: ``train/<wnid>/images/*.JPEG``. Test split: the official ``val/`` (``val/images``
    labelled by ``val/val_annotations.txt``: ``file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h``), as in the
    OutGrid seed; validation is ``val_size`` images held out of train (10,000 by default). The
    unlabelled official ``test/`` is not used. ``download=True`` fetches the official archive
    (resumable, md5-checked) and unpacks it when ``wnids.txt`` is missing.
    """

    url = TINYIMAGENET_URL
    md5 = TINYIMAGENET_MD5

    def __init__(
        self,
        data_dir: str,
        download: bool = True,
        *,
        num_classes: int = 200,
        img_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_size: int | float = 10000,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, mean=mean, std=std, val_size=val_size, **kwargs)
        if not isinstance(download, bool):
            raise ConfigError(f"data.download: expected true or false, got {download!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.download = download
        self._wnids: list[str] | None = None

    @property
    def root(self) -> Path:
        """The folder holding ``wnids.txt``, ``train/`` and ``val/``."""
        if (self.data_dir / "wnids.txt").is_file():
            return self.data_dir
        return self.data_dir / TINYIMAGENET_FOLDER

    def prepare_data(self) -> None:
        """Download and unpack the official archive unless ``wnids.txt`` is already there."""
        if (self.root / "wnids.txt").is_file():
            return
        if not self.download:
            self._check_root()
        if self.root.is_dir() and any(self.root.iterdir()):
            raise DataError(
                f"data.data_dir: {self.root} exists but has no wnids.txt, so it is not the official layout "
                f"({_TIN_LAYOUT}); fix or remove it (data.download=true then fetches the archive)"
            )
        hint = f"download it elsewhere and unpack it into {self.data_dir}, or pass data.download=false"
        archive_path = self.data_dir / f"{TINYIMAGENET_FOLDER}.zip"
        archive = download(self.url, archive_path, self.md5, key="data.data_dir", hint=hint)
        extract_zip(archive, self.data_dir, TINYIMAGENET_FOLDER, key="data.data_dir")
        archive.unlink()

    def _check_root(self) -> None:
        if not (self.root / "wnids.txt").is_file():
            raise DataError(
                f"data.data_dir: no TinyImageNet-200 in {self.root} (expected {_TIN_LAYOUT}, as in the official "
                f"zip); pass data.download=true or point data.data_dir at the folder that holds {TINYIMAGENET_FOLDER}/"
            )

    @property
    def wnids(self) -> list[str]:
        """The class wnids in label order (``wnids.txt`` sorted)."""
        if self._wnids is None:
            self._check_root()
            wnids = read_wnids(self.root / "wnids.txt", "data.data_dir")
            _check_num_classes(self.num_classes, wnids, self.root / "wnids.txt")
            self._wnids = wnids
        return self._wnids

    @property
    def classes(self) -> list[str]:
        return self.wnids

    @property
    def class_names(self) -> list[str]:
        """Human-readable names from ``words.txt`` (first synonym), the wnid where it has none."""
        words = self.root / "words.txt"
        names: dict[str, str] = {}
        if words.is_file():
            for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, text = line.partition("\t")
                names[wnid.strip()] = text.split(",")[0].strip()
        return [names.get(wnid) or wnid for wnid in self.wnids]

    def _load_split(self, train: bool) -> ImageFileDataset:
        return self._train_split() if train else self._val_split()

    def _train_split(self) -> ImageFileDataset:
        samples: list[tuple[Path, int]] = []
        missing = []
        for label, wnid in enumerate(self.wnids):
            files = list_images(self.root / "train" / wnid / "images")
            if not files:
                missing.append(wnid)
            samples += [(path, label) for path in files]
        if missing:
            raise DataError(
                f"data.data_dir: no images in {self.root / 'train'}/<wnid>/images for {_few(missing)}; every wnid "
                f"of wnids.txt needs train/<wnid>/images/*.JPEG (the official layout)"
            )
        return ImageFileDataset(samples, self.wnids)

    def _val_split(self) -> ImageFileDataset:
        annotations = self.root / "val" / "val_annotations.txt"
        images = self.root / "val" / "images"
        if not annotations.is_file() or not images.is_dir():
            raise DataError(
                f"data.data_dir: {self.root / 'val'} needs images/ and val_annotations.txt (the official layout: "
                f"{_TIN_LAYOUT})"
            )
        index = {wnid: label for label, wnid in enumerate(self.wnids)}
        samples = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            where = f"data.data_dir: {annotations}:{number}"
            if len(fields) < 2:
                raise DataError(f"{where}: expected `<file>\\t<wnid>\\t<x>\\t<y>\\t<w>\\t<h>`, got {line.strip()!r}")
            name, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                raise DataError(
                    f"{where}: wnid {wnid!r} (for {name}) is not in {self.root / 'wnids.txt'}; each line must name a "
                    "wnid of wnids.txt"
                )
            path = images / name
            if not path.is_file():
                raise DataError(f"{where}: names {name}, but there is no {path}; restore the file or remove the line")
            samples.append((path, index[wnid]))
        return ImageFileDataset(samples, self.wnids)


class TinyImageNetCDataModule(ImageDataModule):
    """TinyImageNet-C, evaluation only: one test set per (corruption, severity) found under ``root``.

    Layout ``<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG``. Labels follow the training wnid
    order: ``train_wnids`` is TinyImageNet-200's ``wnids.txt`` (or the folder holding it, or a list);
    class index = position in the sorted list, as in :class:`TinyImageNetDataModule`. Wnid folders
    not in that list are dropped (logged); missing ones simply contribute no images.

    ``corruptions`` / ``severities`` restrict the sets (null = every one found). ``test_dataloader()``
    returns one loader per set, in the order of :attr:`names` (``"<corruption>/<severity>"``):
    corruptions in the standard order of :data:`CORRUPTIONS` (other folder names after them,
    alphabetically), severities ascending. :attr:`found` says what is on disk. ``subset`` and
    ``cache`` apply to every set. Training and validation loaders raise a ConfigError.
    """

    def __init__(
        self,
        root: str,
        train_wnids: str | Sequence[str],
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        *,
        num_classes: int = 200,
        img_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **kwargs: Any,
    ) -> None:
        kwargs.update(val_size=0, augment=None, repeated_aug=1)  # evaluation only: no split, no augmentation
        super().__init__(num_classes=num_classes, img_size=img_size, mean=mean, std=std, **kwargs)
        self.root = Path(root).expanduser().resolve()
        self.train_wnids = self._read_train_wnids(train_wnids)
        _check_num_classes(num_classes, self.train_wnids, "data.train_wnids")
        if corruptions is not None and (
            isinstance(corruptions, str) or not all(isinstance(c, str) and c for c in corruptions) or not corruptions
        ):
            raise ConfigError(
                f"data.corruptions: expected null (all found) or a list of corruption names, e.g. "
                f"[{CORRUPTIONS[0]}, {CORRUPTIONS[5]}], got {corruptions!r}"
            )
        if severities is not None and (
            isinstance(severities, str | int)
            or not severities
            or not all(isinstance(s, int) and not isinstance(s, bool) and s in SEVERITIES for s in severities)
        ):
            raise ConfigError(
                f"data.severities: expected null (all found) or a list of integers 1-5, got {severities!r}"
            )
        self.corruptions = list(dict.fromkeys(corruptions)) if corruptions is not None else None
        self.severities = sorted(set(severities)) if severities is not None else None
        self._found: dict[str, list[int]] | None = None
        self.names: list[str] = []
        self.test_sets: list[Dataset] = []

    @staticmethod
    def _read_train_wnids(train_wnids: str | Sequence[str]) -> list[str]:
        if isinstance(train_wnids, str | Path):
            path = Path(train_wnids).expanduser().resolve()
            if path.is_dir():
                nested = path / TINYIMAGENET_FOLDER / "wnids.txt"
                path = nested if nested.is_file() else path / "wnids.txt"
            return read_wnids(path, "data.train_wnids")
        wnids = [str(wnid) for wnid in train_wnids]
        if not wnids or len(set(wnids)) != len(wnids):
            raise ConfigError("data.train_wnids: expected a wnids.txt path or a non-empty list of distinct wnids")
        return sorted(wnids)

    @property
    def classes(self) -> list[str]:
        return self.train_wnids

    @property
    def found(self) -> dict[str, list[int]]:
        """``{corruption: [severities]}`` of every set on disk, in the documented order."""
        if self._found is None:
            if not self.root.is_dir():
                raise DataError(f"data.root: {self.root} is not a folder; expected {_TINC_LAYOUT}")
            found = {}
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                names = {str(s) for s in SEVERITIES}
                levels = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name in names)
                if levels:
                    found[folder.name] = levels
            if not found:
                raise DataError(
                    f"data.root: no <corruption>/<severity>/ folders in {self.root}; expected {_TINC_LAYOUT}"
                )
            rank = {name: i for i, name in enumerate(CORRUPTIONS)}
            self._found = {c: found[c] for c in sorted(found, key=lambda c: (rank.get(c, len(rank)), c))}
        return self._found

    @property
    def missing(self) -> list[str]:
        """The standard ``corruption/severity`` sets (15 x 5) that are not on disk."""
        return [f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES if s not in self.found.get(c, [])]

    def selected(self) -> list[tuple[str, int]]:
        """The (corruption, severity) pairs to evaluate, in order."""
        found = self.found
        if self.corruptions is not None:
            absent = [c for c in self.corruptions if c not in found]
            if absent:
                raise DataError(
                    f"data.corruptions: {_few(absent)} not found in {self.root} (found: {_few(list(found), 15)}); "
                    "restrict data.corruptions to those, or add the folders"
                )
        names = [c for c in found if self.corruptions is None or c in self.corruptions]
        pairs = [(c, s) for c in names for s in found[c] if self.severities is None or s in self.severities]
        if not pairs:
            raise DataError(
                f"data.severities: none of {self.severities} is present for {_few(names)} in {self.root}; "
                f"found {self.summary()}"
            )
        return pairs

    def summary(self) -> str:
        """One line: what was found, and how much of the standard 15 x 5 is missing."""
        parts = [f"{c} {','.join(map(str, levels))}" for c, levels in self.found.items()]
        count = sum(len(levels) for levels in self.found.values())
        missing = self.missing
        text = f"{count} corruption/severity sets ({'; '.join(parts)})"
        if missing:
            text += f"; {len(missing)} of the 75 standard sets are missing"
        return text

    def _load_set(self, corruption: str, severity: int) -> ImageFileDataset:
        folder = self.root / corruption / str(severity)
        index = {wnid: label for label, wnid in enumerate(self.train_wnids)}
        samples: list[tuple[Path, int]] = []
        dropped = []
        for class_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_folder.name not in index:
                dropped.append(class_folder.name)
                continue
            files = list_images(class_folder)
            if not files:
                raise DataError(
                    f"data.root: class folder {class_folder} holds no images; expected {_TINC_LAYOUT}; add the images "
                    "or remove the folder"
                )
            samples += [(path, index[class_folder.name]) for path in files]
        if dropped:
            log.info("TinyImageNet-C %s/%d: dropped %d wnid folder(s) not in the training list: %s",
                     corruption, severity, len(dropped), _few(dropped))
        if not samples:
            raise DataError(
                f"data.root: {folder} has no class folder of a training wnid (data.train_wnids); "
                f"expected {_TINC_LAYOUT}"
            )
        return ImageFileDataset(samples, self.train_wnids)

    def _load_split(self, train: bool) -> Dataset:
        raise NotImplementedError("TinyImageNet-C has one test set per corruption and severity; see setup()")

    def setup(self, stage: str | None = None) -> None:
        """Scan the selected sets once and build their eval views; later calls do nothing."""
        if self.test_sets:
            return
        pairs = self.selected()
        log.info("TinyImageNet-C at %s: %s; evaluating %d", self.root, self.summary(), len(pairs))
        names, sets = [], []
        for corruption, severity in pairs:
            name = f"{corruption}/{severity}"
            split = self._prepare_split(self._load_set(corruption, severity), name, self.subset)
            sets.append(with_transform(split, self._eval_transform(self._native_size(split))))
            names.append(name)
        self.names, self.test_sets = names, sets

    def _evaluation_only(self, what: str) -> ConfigError:
        return ConfigError(
            f"data=tinyimagenet_c: TinyImageNet-C is for evaluation only and has no {what} loader; train with "
            "data=tinyimagenet and evaluate the checkpoint on data=tinyimagenet_c"
        )

    def train_dataloader(self) -> DataLoader:
        raise self._evaluation_only("training")

    def val_dataloader(self) -> DataLoader:
        raise self._evaluation_only("validation")

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per set, in the order of :attr:`names`."""
        if not self.test_sets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return [self._eval_loader(dataset) for dataset in self.test_sets]
