"""Lightning callbacks instantiated from conf/callbacks/."""

from callbacks.progress import make_progress_bar

__all__ = ["make_progress_bar"]
