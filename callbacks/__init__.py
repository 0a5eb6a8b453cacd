"""Lightning callbacks instantiated from conf/callbacks/."""

from callbacks.progress import make_progress_bar
from callbacks.sdpa_backend import SDPABackend

__all__ = ["SDPABackend", "make_progress_bar"]
