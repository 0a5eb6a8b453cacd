"""Lightning callbacks instantiated from conf/callbacks/."""

from vitlab.callbacks.attention_dump import AttentionDumpCallback
from vitlab.callbacks.checkpoint import AtomicModelCheckpoint
from vitlab.callbacks.flops import FlopsCallback, count_flops
from vitlab.callbacks.lr_monitor import LearningRateMonitor
from vitlab.callbacks.nan_guard import NaNGuard, NonFiniteLossError
from vitlab.callbacks.progress import make_progress_bar
from vitlab.callbacks.sdpa_backend import SDPABackend
from vitlab.callbacks.throughput import ThroughputCallback, measure_matmul_tflops

__all__ = [
    "AtomicModelCheckpoint",
    "AttentionDumpCallback",
    "FlopsCallback",
    "LearningRateMonitor",
    "NaNGuard",
    "NonFiniteLossError",
    "SDPABackend",
    "ThroughputCallback",
    "count_flops",
    "make_progress_bar",
    "measure_matmul_tflops",
]
