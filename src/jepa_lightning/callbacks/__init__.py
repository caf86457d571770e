"""Callbacks that monitor training: embedding geometry, zero-shot, probes, collapse, pictures."""

from jepa_lightning.callbacks.collapse import CollapseMonitor
from jepa_lightning.callbacks.embedding_monitor import EmbeddingMonitor
from jepa_lightning.callbacks.grad_norm import GradNormMonitor
from jepa_lightning.callbacks.probes import KNNProbe, LinearProbe
from jepa_lightning.callbacks.tensorboard_images import TensorBoardImages
from jepa_lightning.callbacks.zero_shot import ZeroShotEvaluator

__all__ = [
    "CollapseMonitor",
    "EmbeddingMonitor",
    "GradNormMonitor",
    "KNNProbe",
    "LinearProbe",
    "TensorBoardImages",
    "ZeroShotEvaluator",
]
