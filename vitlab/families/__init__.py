"""LightningModules: the shared ImageClassifier and one subclass per model family."""

from vitlab.families.classifier import ImageClassifier
from vitlab.families.mini_vit import MiniViTClassifier
from vitlab.families.outgrid import OutGridClassifier

__all__ = ["ImageClassifier", "MiniViTClassifier", "OutGridClassifier"]
