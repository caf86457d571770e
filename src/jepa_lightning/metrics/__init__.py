"""Torchmetrics metrics for joint embeddings: recall, alignment, uniformity, zero-shot accuracy."""

from jepa_lightning.metrics.alignment import Alignment
from jepa_lightning.metrics.recall import CrossModalRecall
from jepa_lightning.metrics.uniformity import Uniformity
from jepa_lightning.metrics.zero_shot import ZeroShotAccuracy

__all__ = ["Alignment", "CrossModalRecall", "Uniformity", "ZeroShotAccuracy"]
