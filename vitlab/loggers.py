"""Logger constructors that the ``logger/`` configs need beyond Lightning's own classes."""

from __future__ import annotations

import os
from typing import Any


def mlflow_logger(tracking_uri: str | None = None, **kwargs: Any) -> Any:
    """Lightning's MLFlowLogger; for a local file store (``file:<folder>``) MLflow 3 asks for an explicit
    opt-in (it recommends a database for servers), given here because a run-local folder is the point."""
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri and tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
