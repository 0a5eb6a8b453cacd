"""LightningModules: ImageClassifier drives every network through the model contract; a family
subclass exists only where it adds behaviour (QAViT's fusion-weight logging, the timm baselines'
maps). ViTClassifier, MiniViTClassifier and OutGridClassifier are ImageClassifier under the names
older run configs target."""

from vitlab.families.baseline import BaselineClassifier
from vitlab.families.classifier import ImageClassifier
from vitlab.families.mini_vit import MiniViTClassifier
from vitlab.families.outgrid import OutGridClassifier
from vitlab.families.qavit import QAViTClassifier
from vitlab.families.vit import ViTClassifier

__all__ = ["BaselineClassifier", "ImageClassifier", "MiniViTClassifier", "OutGridClassifier", "QAViTClassifier", "ViTClassifier"]
