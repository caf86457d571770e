"""Helpers shared by the callbacks: the model they need, a batch's embeddings, the writer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from jepa_lightning.batch import Batch
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA


def require_vl_jepa(pl_module: LightningModule, callback: str) -> VLJEPA:
    """Returns ``pl_module`` as a :class:`VLJEPA`.

    Args:
        pl_module: The module a callback is attached to.
        callback: The callback's name, for the error message.

    Returns:
        The same module.

    Raises:
        TypeError: If it is not a ``VLJEPA``.
    """
    if not isinstance(pl_module, VLJEPA):
        raise TypeError(f"{callback} needs a VLJEPA module, got {type(pl_module).__name__}")
    return pl_module


@torch.no_grad()
def batch_embeddings(model: VLJEPA, batch: Batch) -> tuple[Tensor, Tensor]:
    """The retrieval embeddings ``ŝ`` and ``s`` of a batch, as validation computes them.

    Args:
        model: The model.
        batch: A batch with captions.

    Returns:
        ``(B, D)`` unit-norm image and caption embeddings, float32.
    """
    images, texts = BatchForward(model.model, batch).retrieval
    return images.float(), texts.float()


def validation_embeddings(outputs: Any, callback: str) -> tuple[Tensor, Tensor]:
    """The ``ŝ`` and ``s`` that ``VLJEPA.validation_step`` returned for a batch, float32.

    Args:
        outputs: What the validation step returned.
        callback: The callback's name, for the error message.

    Returns:
        ``(B, D)`` unit-norm image and caption embeddings of the rows that count, those of
        ``batch.valid_rows()`` (an evaluation batch's filler row is left out).

    Raises:
        TypeError: If the step returned no embeddings.
    """
    if not isinstance(outputs, Mapping) or "image_embeddings" not in outputs:
        raise TypeError(
            f"{callback} reads the embeddings that VLJEPA.validation_step returns, "
            f"got {type(outputs).__name__}"
        )
    return outputs["image_embeddings"].float(), outputs["text_embeddings"].float()


def tensorboard_logger(trainer: Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoard logger, if it has one (on every rank).

    Its ``experiment`` (the ``SummaryWriter``) is real on rank 0 only.

    Args:
        trainer: The trainer.

    Returns:
        The logger, or None when no logger is a ``TensorBoardLogger``.
    """
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
