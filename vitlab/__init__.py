"""vitlab: a Hydra + Lightning experiment suite for small vision transformers.

Importing it registers the config schemas and resolvers, so Hydra's compose API works on the shipped
config tree (``vitlab/conf``) at once; it imports no torch (a refused command line answers at once). The Python API (docs/python.md): :func:`compose`,
:func:`build_module`, :func:`build_datamodule`, :func:`load_run`; networks alone:
``vitlab.models.create_model``.
"""

from vitlab.config import register_configs

__version__ = "0.1.0"
__all__ = ["CONF_DIR", "build_datamodule", "build_module", "compose", "load_run", "register_configs"]

_API = {"CONF_DIR", "build_datamodule", "build_module", "compose", "load_run"}

register_configs()


def __getattr__(name: str):
    # The API module imports torch and Lightning; loaded on first use so `import vitlab` stays light.
    if name in _API:
        from vitlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
