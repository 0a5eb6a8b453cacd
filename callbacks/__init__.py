"""Lightning callbacks instantiated from conf/callbacks/."""

from callbacks.attention_dump import AttentionDumpCallback
from callbacks.checkpoint import AtomicModelCheckpoint
from callbacks.flops import FlopsCallback
from callbacks.nan_guard import NaNGuard, NonFiniteLossError
from callbacks.progress import make_progress_bar
from callbacks.records import RunRecord, collect_records
from callbacks.sdpa_backend import SDPABackend
from callbacks.throughput import ThroughputCallback

__all__ = [
    "AtomicModelCheckpoint",
    "AttentionDumpCallback",
    "FlopsCallback",
    "NaNGuard",
    "NonFiniteLossError",
    "RunRecord",
    "SDPABackend",
    "ThroughputCallback",
    "collect_records",
    "make_progress_bar",
]
