"""Torchmetrics metrics for joint embeddings: recall, alignment, uniformity, zero-shot, RankMe."""

from jepa_lightning.metrics.alignment import Alignment
from jepa_lightning.metrics.captions import CaptionQuality
from jepa_lightning.metrics.effective_rank import EffectiveRank
from jepa_lightning.metrics.recall import CrossModalRecall
from jepa_lightning.metrics.uniformity import Uniformity
from jepa_lightning.metrics.vqa import VQAAccuracy
from jepa_lightning.metrics.zero_shot import ZeroShotAccuracy

__all__ = [
    "Alignment",
    "CaptionQuality",
    "CrossModalRecall",
    "EffectiveRank",
    "Uniformity",
    "VQAAccuracy",
    "ZeroShotAccuracy",
]
