"""The clear-vit ViTs need no family module: :class:`ImageClassifier` drives them through the model
contract (their maps say which are distributions, so the softmax check tests the full maps, or the
two softmax maps of a differential block, and never the CLS rows; the entropy-modulated variant's
``train/entropy_mean`` and ``train/lambda_mean`` come back with ``return_aux``; the network's
``describe()`` is logged when fitting starts). conf/model/vit*.yaml target ImageClassifier; the name
stays for run folders whose config.yaml still targets it."""

from __future__ import annotations

from vitlab.families.classifier import ImageClassifier

ViTClassifier = ImageClassifier
