"""OutGridViT needs no family module: its maps carry their layouts (dynamic kernels normalised over
the taps, grid attention over the keys), so :class:`ImageClassifier` drives it through the model
contract and conf/model/outgrid*.yaml target it directly. The name stays for run folders whose
config.yaml still targets it."""

from __future__ import annotations

from vitlab.families.classifier import ImageClassifier

OutGridClassifier = ImageClassifier
