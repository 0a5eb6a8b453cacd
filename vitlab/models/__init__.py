"""Plain ``nn.Module`` networks, usable without Lightning or Hydra: ``create_model(name, **overrides)``."""

from vitlab.models import baselines, mini_vit, outgrid, qavit, vit  # noqa: F401  (register their sizes)
from vitlab.models._registry import create_model, get_model_config, list_models, register_model

__all__ = ["create_model", "get_model_config", "list_models", "register_model"]
