"""Plain ``nn.Module`` networks, usable without Lightning or Hydra: ``create_model(name, **overrides)``.

Every module of this package is imported here, so a family file (``vitlab/models/<family>.py``, which
registers its sizes with :func:`register_model`) needs no other edit to be selectable by name."""

import importlib
import pkgutil

from vitlab._environment import check_torch_pair

check_torch_pair()  # before timm imports torchvision

from vitlab.models._registry import create_model, get_model_config, list_models, register_model  # noqa: E402

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["create_model", "get_model_config", "list_models", "register_model"]
