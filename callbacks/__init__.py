"""Lightning callbacks instantiated from conf/callbacks/."""

from callbacks.attention_dump import AttentionDumpCallback
from callbacks.checkpoint import AtomicModelCheckpoint
from callbacks.epoch_curve import EpochCurve
from callbacks.flops import FlopsCallback, count_flops
from callbacks.lr_monitor import LearningRateMonitor
from callbacks.nan_guard import NaNGuard, NonFiniteLossError
from callbacks.progress import make_progress_bar
from callbacks.sdpa_backend import SDPABackend
from callbacks.throughput import ThroughputCallback, measure_matmul_tflops

__all__ = [
    "AtomicModelCheckpoint",
    "AttentionDumpCallback",
    "EpochCurve",
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
