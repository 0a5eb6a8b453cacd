"""The one installation fault vitlab checks before anything else: a torch and a torchvision that
cannot work together (pip pairs a CPU torch with a CUDA torchvision when one wheel index is not
reachable), which otherwise ends every command in a traceback about ``torchvision::nms``."""

from __future__ import annotations

import os
import sys

FIX = ('reinstall the two together from one index, e.g. pip install --force-reinstall torch torchvision '
       '(or pip install -e ".[dev]" again in a new venv)')


def torch_pair_problem() -> str | None:
    """One line saying why torchvision does not load with this torch, or None when it does."""
    try:
        import torch
    except ImportError:
        return None  # no torch at all: its own ImportError says so
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError, OSError) as err:
        if "torchvision" not in str(err) and "undefined symbol" not in str(err):
            return None  # not the pairing: the import error speaks for itself
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        return f"torch {torch.__version__} and this torchvision do not work together ({first}); {FIX}"
    return None


def check_torch_pair(command: bool | None = None) -> None:
    """From a vitlab command (``command``, else guessed from how Python was started): the problem as
    one ``error:`` line and exit status 2. Imported as a library: an ImportError with the same line."""
    problem = torch_pair_problem()
    if problem is None:
        return
    if command is None:
        # A console script (vitlab-train), or python -m vitlab.<command> (argv[0] is "-m" while the
        # package is imported).
        name = os.path.basename(sys.argv[0] if sys.argv else "")
        command = name.startswith("vitlab-") or name == "-m"
    if command:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(problem)
