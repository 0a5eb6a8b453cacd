"""Lightning callbacks instantiated from conf/callbacks/."""

from vitlab.callbacks.attention_dump import AttentionDumpCallback
from vitlab.callbacks.checkpoint import AtomicModelCheckpoint
from vitlab.callbacks.epoch_curve import EpochCurve
from vitlab.callbacks.flops import FlopsCallback
from vitlab.callbacks.nan_guard import NaNGuard, NonFiniteLossError
from vitlab.callbacks.progress import make_progress_bar
from vitlab.callbacks.records import RunRecord, collect_records
from vitlab.callbacks.sdpa_backend import SDPABackend
from vitlab.callbacks.throughput import ThroughputCallback

__all__ = [
    "AtomicModelCheckpoint",
    "EpochCurve",
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
