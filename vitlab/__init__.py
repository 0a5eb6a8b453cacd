"""vitlab: a Hydra + Lightning experiment suite for small vision transformers."""

__version__ = "0.1.0"
