"""LightningModules: ImageClassifier drives every network through the model contract; a family
subclass exists only where it adds behaviour (QAViT's fusion-weight logging, the timm baselines'
maps). Older run folders that name a retired family class load through :mod:`vitlab.compat`."""

from vitlab.families.baseline import BaselineClassifier
from vitlab.families.classifier import ImageClassifier
from vitlab.families.qavit import QAViTClassifier

__all__ = ["BaselineClassifier", "ImageClassifier", "QAViTClassifier"]
