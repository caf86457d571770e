"""Callbacks that monitor VL-JEPA training: embedding geometry, zero-shot, gradients, pictures."""

from jepa_lightning.callbacks.embedding_monitor import EmbeddingMonitor
from jepa_lightning.callbacks.grad_norm import GradNormMonitor
from jepa_lightning.callbacks.tensorboard_images import TensorBoardImages
from jepa_lightning.callbacks.zero_shot import ZeroShotEvaluator

__all__ = ["EmbeddingMonitor", "GradNormMonitor", "TensorBoardImages", "ZeroShotEvaluator"]
