"""Lightning callbacks instantiated from conf/callbacks/."""

from callbacks.checkpoint import AtomicModelCheckpoint
from callbacks.nan_guard import NaNGuard, NonFiniteLossError
from callbacks.progress import make_progress_bar

__all__ = ["AtomicModelCheckpoint", "NaNGuard", "NonFiniteLossError", "make_progress_bar"]
