"""Callbacks: embedding geometry, zero-shot, VQA, probes, collapse, pictures; embeddings out."""

from jepa_lightning.callbacks.collapse import CollapseMonitor
from jepa_lightning.callbacks.embedding_monitor import EmbeddingMonitor
from jepa_lightning.callbacks.grad_norm import GradNormMonitor
from jepa_lightning.callbacks.prediction_writer import EmbeddingWriter
from jepa_lightning.callbacks.probes import KNNProbe, LinearProbe
from jepa_lightning.callbacks.progress_bar import ProgressBar
from jepa_lightning.callbacks.tensorboard_images import TensorBoardImages
from jepa_lightning.callbacks.vqa import VQAEvaluator
from jepa_lightning.callbacks.zero_shot import ZeroShotEvaluator

__all__ = [
    "CollapseMonitor",
    "EmbeddingMonitor",
    "EmbeddingWriter",
    "GradNormMonitor",
    "KNNProbe",
    "LinearProbe",
    "ProgressBar",
    "TensorBoardImages",
    "VQAEvaluator",
    "ZeroShotEvaluator",
]
