"""Reusable layers shared by the vitlab model families."""

from vitlab.layers.attention import Attention, attend
from vitlab.layers.pos_embed import sincos_1d, sincos_2d
from vitlab.layers.transformer import TransformerBlock

__all__ = ["Attention", "TransformerBlock", "attend", "sincos_1d", "sincos_2d"]
