"""Image files: which names are images, listing them in a folder, and decoding one into RGB.

A file PIL cannot decode raises :class:`ImageDecodeError` (a ``DataError``) naming the file, also
from inside a DataLoader worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from vitlab.errors import DataError

# File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
# The PIL decoders a file may use, whatever its name says: raster formats decoded by PIL itself. Others
# are left out, EPS above all (PIL hands it to the Ghostscript interpreter, which runs the PostScript).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "PPM", "TIFF", "GIF")


class ImageDecodeError(DataError):
    """An image file that PIL cannot decode; the message is ``<path>: cannot decode image (...)``.

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
