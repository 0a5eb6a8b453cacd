"""Image files: which names are images, listing them in a folder, decoding one into RGB, and the
cheap check of a split's files at set-up.

A file PIL cannot decode raises :class:`ImageDecodeError` (a ``DataError``) naming the file, also
from inside a DataLoader worker.

:func:`check_image_files` looks at every file of a split before training starts, without decoding
it: the file can be opened, is not empty, PIL recognises its header as one of :data:`IMAGE_FORMATS`
and, for JPEG, PNG and GIF, the file ends with the format's end marker. A file whose end marker is
missing (a file cut short, or one with bytes after the marker) is then decoded once, which tells the
two apart. What it does not catch: damage inside the pixel data of a file whose header and end are
intact, and a cut-short BMP, PPM, TIFF or WEBP file (formats without an end marker); such a file
still fails when it is loaded, naming the file. A split of at least :data:`STAMP_MIN_FILES` files
that passed is remembered in a small JSON stamp under ``data.cache_dir``, keyed by its file list with
each file's size and modification time, so a later run over unchanged files checks nothing (a smaller
split is checked each time, in well under a second)::

    <cache_dir>/<DataModule>-<split>-<file list hash>.checked.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vitlab.errors import DataError

log = logging.getLogger(__name__)

# File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
# The PIL decoders a file may use, whatever its name says: raster formats decoded by PIL itself. Others
# are left out, EPS above all (PIL hands it to the Ghostscript interpreter, which runs the PostScript).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "PPM", "TIFF", "GIF")
# The bytes a complete file of these formats ends with (JPEG's EOI marker, PNG's IEND chunk, GIF's trailer).
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b"\x3b"}
#: Bumped when the check changes, so that splits checked by an older one are checked again.
CHECK_VERSION = 1
#: Splits of fewer files are checked in every run and leave no stamp.
STAMP_MIN_FILES = 1000


class ImageDecodeError(DataError):
    """An image file that PIL cannot decode; the message names the file: ``<path>: cannot decode image
    (...)`` when it is loaded, ``data.root: <path> is not a readable image (...)`` from the set-up check.

    A DataLoader worker sends the exception to the main process, where torch rebuilds it as
    ``ImageDecodeError("Caught ImageDecodeError in DataLoader worker process 0. Original Traceback
    ...")``. The constructor recognises that form and keeps only the original one-line message, so
    the entry points still print one line naming the file, not a worker traceback.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(self._original_message(str(message)))

    @classmethod
    def _original_message(cls, message: str) -> str:
        if "\n" not in message:
            return message
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        lines = [line for line in message.splitlines() if line.startswith((prefix, f"{cls.__qualname__}: "))]
        if lines:
            return lines[-1].split(": ", 1)[1]
        return " ".join(line.strip() for line in message.splitlines() if line.strip())


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file into an RGB PIL image; :class:`ImageDecodeError` naming ``path`` if it fails."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).replace("\n", " ").replace(f" '{path}'", "").replace(str(path), "the file").strip()
        reason = reason or type(err).__name__
        raise ImageDecodeError(f"{path}: cannot decode image ({reason}); remove or replace the file") from err


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (empty if it is not a folder)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if entry.is_file() and is_image_file(entry.name))


def _reason(err: BaseException, path: str | Path) -> str:
    """``err`` as a short reason without the path (the message names the file once)."""
    if isinstance(err, UnidentifiedImageError):
        return f"not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    reason = str(err).replace("\n", " ").replace(f" '{path}'", "").replace(str(path), "the file").strip()
    return reason or type(err).__name__


def _ends_with(file, marker: bytes) -> bool:
    file.seek(-len(marker), os.SEEK_END)
    return file.read(len(marker)) == marker


def image_file_problem(path: str | Path, size: int) -> str | None:
    """Why the file at ``path`` (of ``size`` bytes) is not a readable image, or None when it passes the
    cheap check (header, and the end marker of JPEG, PNG and GIF files; see the module docstring)."""
    if size == 0:
        return "the file is empty"
    try:
        with open(path, "rb") as file:
            with Image.open(file, formats=IMAGE_FORMATS) as image:
                marker = _END_MARKERS.get(image.format)
            if marker is None or size < len(marker) or _ends_with(file, marker):
                return None
        load_image(path)  # no end marker: a file cut short fails to decode, one with trailing bytes decodes
    except ImageDecodeError as err:
        return _reason(err.__cause__ or err, path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return _reason(err, path)
    return None


def _digest(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def _file_stats(paths: Sequence[str], key: str) -> list[tuple[str, int, int]]:
    stats = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as err:
            raise ImageDecodeError(f"{key}: {path} is not a readable image ({err.strerror}); remove or replace it") from None
        stats.append((path, info.st_size, info.st_mtime_ns))
    return stats


def check_image_files(paths: Sequence[str], *, cache_dir: str | Path, stamp: str, key: str = "data.root") -> None:
    """Refuse, in one line naming the first bad file, a list of image files of which any fails the
    cheap check; a list that passed is remembered in ``<cache_dir>/<stamp>-<hash>.checked.json``."""
    stats = _file_stats(paths, key)
    stamp_path = Path(cache_dir).expanduser() / f"{stamp.replace('/', '_')}-{_digest(list(paths))[:16]}.checked.json"
    state = _digest({"version": CHECK_VERSION, "files": stats})
    try:
        if json.loads(stamp_path.read_text()).get("key") == state:
            return
    except (OSError, ValueError, AttributeError):
        pass  # no stamp, or an unreadable one: check
    bad = [(path, problem) for path, size, _ in stats if (problem := image_file_problem(path, size))]
    if bad:
        (path, problem), others = bad[0], [p for p, _ in bad[1:]]
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        more = f" ({len(others)} more file(s) fail the same check: {listed})" if others else ""
        raise ImageDecodeError(f"{key}: {path} is not a readable image ({problem}); remove or replace it{more}")
    if len(stats) >= STAMP_MIN_FILES:
        _write_stamp(stamp_path, {"key": state, "files": len(stats), "version": CHECK_VERSION})


def _write_stamp(path: Path, content: dict) -> None:
    """Write ``content`` as JSON into ``path`` through a temporary file; a folder that cannot be written
    only costs the check again next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(content) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        log.info("data.cache_dir: cannot write %s (%s); the image files are checked again next run", path, err)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
