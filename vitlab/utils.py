"""Small helpers shared by the data modules and the model families (no torch model code, no data code)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on all of ``parts`` (non-negative ints, or strings naming a use).

    Unlike ``seed + epoch``, (seed 0, epoch 1) and (seed 1, epoch 0) give unrelated streams, so
    runs with neighbouring seeds do not replay each other's data order one epoch apart; a string
    part keeps streams for different uses of the same seed apart.
    """
    entropy = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Let this process reuse the memory its freed tensors held (``hardware.reuse_freed_memory``).

    By default glibc gives every block larger than its mmap threshold (at most 32 MiB, often far
    less) its own mapping and returns it to the system when freed, so the next activation of that
    size starts on fresh pages and pays a page fault per 4 KiB written. A training step frees and
    reallocates the same large activations every time: with blocks up to 1 GiB served from the heap
    and up to 1 GiB of free heap kept, they are reused instead. The process keeps its peak memory
    instead of returning it between steps. Returns whether the setting took (glibc only; a no-op
    elsewhere)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def cache_dir() -> Path:
    """Where vitlab keeps what it measured or derived on this machine (the peak FLOP/s per device,
    the registry's config nodes): ``$VITLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitlab``
    (``~/.cache/vitlab``)."""
    if os.environ.get("VITLAB_CACHE_DIR"):
        return Path(os.environ["VITLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitlab"
