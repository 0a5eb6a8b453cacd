"""Resumable, checksummed file downloads and zip extraction that never leaves a half-unpacked tree.

Only the standard library: :func:`download` writes into ``<dest>.part``, resumes an interrupted
transfer with an HTTP ``Range`` request, checks the md5 and only then renames the file to ``dest``.
Every failure is a one-line :class:`~vitlab.errors.DataError` naming the URL or the file.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from vitlab.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).replace("\n", " ") or type(err).__name__


def download(url: str, dest: str | Path, md5: str | None, *, key: str, hint: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into the file ``dest`` and return it.

    A complete ``dest`` with the right md5 is kept as it is. Otherwise the bytes go to
    ``<dest>.part``; if that exists from an interrupted run, only the rest is requested (HTTP
    ``Range``; a server that ignores it sends everything again, and the file is restarted). With
    ``md5`` given, a mismatch removes the part file and raises. ``key`` (a config key) starts every
    error message and ``hint`` ends the one about an unreachable server.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "vitlab"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = bool(offset) and getattr(response, "status", 200) == 206
            total = response.headers.get("Content-Length") if response.headers else None
            total = int(total) + (offset if resumed else 0) if total and total.isdigit() else None
            log.info("downloading %s to %s%s", url, dest, f" (resuming at {offset} bytes)" if resumed else "")
            _copy(response, part, "ab" if resumed else "wb", offset if resumed else 0, total)
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and offset):  # 416 on a resume: the part file is already complete
            raise DataError(f"{key}: cannot download {url} into {dest} (HTTP {err.code} {err.reason}); {hint}") from err
    except (urllib.error.URLError, socket.timeout, ConnectionError) as err:
        raise DataError(f"{key}: cannot download {url} into {dest} ({_one_line(err)}); {hint}") from err
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise DataError(
                f"{key}: the file downloaded from {url} has md5 {got}, expected {md5} (damaged or changed "
                f"download); removed {part}, run again to download it afresh"
            )
    part.replace(dest)
    return dest


def _copy(response, part: Path, mode: str, done: int, total: int | None) -> None:
    next_report = 0.1
    with part.open(mode) as f:
        for block in iter(lambda: response.read(_CHUNK), b""):
            f.write(block)
            done += len(block)
            if total and done / total >= next_report:
                log.info("  %d%% of %.0f MB", 100 * done // total, total / 2**20)
                next_report += 0.1


def extract_zip(archive: str | Path, into: str | Path, top: str, *, key: str) -> Path:
    """Unpack ``archive`` (whose members lie under the folder ``top``) into ``into`` and return
    ``into / top``. It is unpacked into a hidden sibling folder first and moved into place at the
    end, so an interrupted unpack never leaves a half tree that looks complete."""
    archive, into = Path(archive), Path(into)
    target = into / top
    if target.exists():
        raise DataError(f"{key}: {target} already exists, so {archive} is not unpacked over it; move it away first")
    staging = into / f".{top}.unpacking"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)  # zipfile drops absolute paths and '..' from member names
    except (zipfile.BadZipFile, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{key}: cannot unpack {archive} ({_one_line(err)}); delete it and download it again") from err
    unpacked = staging / top
    if not unpacked.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"{key}: {archive} holds no {top}/ folder; is it the right archive? delete it and download again"
        )
    unpacked.replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
