"""LightningModules: the shared ImageClassifier and one subclass per model family."""

from vitlab.families.baseline import BaselineClassifier
from vitlab.families.classifier import ImageClassifier
from vitlab.families.mini_vit import MiniViTClassifier
from vitlab.families.outgrid import OutGridClassifier
from vitlab.families.qavit import QAViTClassifier
from vitlab.families.vit import ViTClassifier

__all__ = ["BaselineClassifier", "ImageClassifier", "MiniViTClassifier", "OutGridClassifier", "QAViTClassifier", "ViTClassifier"]
