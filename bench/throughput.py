"""Kept for old commands: ``python bench/throughput.py ...`` is ``python -m vitlab.bench ...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitlab.bench import main  # noqa: E402

if __name__ == "__main__":
    main()
