"""Small helpers shared by the data modules and the model families (no torch model code, no data code)."""

from __future__ import annotations

import zlib

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
