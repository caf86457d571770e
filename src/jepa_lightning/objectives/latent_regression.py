"""The JEPA pretraining objective: regression onto the target encoder's features in latent space."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

Distance = Literal["l1", "smooth_l1", "l2"]


class LatentRegression(nn.Module):
    """I-JEPA / V-JEPA loss: predicted features against layer-normed target features.

    The loss of :class:`~jepa_lightning.modules.IJEPA`. It follows the objectives' shape
    (``name``, ``forward``) but not :class:`~jepa_lightning.objectives.Objective`'s contract,
    which is VL-JEPA's (a ``VLJEPAModel`` to bind to, a ``BatchForward`` of captions and
    queries): in JEPA pretraining the model core computes the pieces (predictions at the
    target positions, the target encoder's features there), and the objective only measures
    how far apart they are.

    The targets are layer-normed over the feature dimension without affine parameters (as
    both papers do), so the loss cannot shrink by scaling the targets, and are never
    differentiated (the target encoder is an EMA, not trained).

    Args:
        distance: ``"l1"`` (V-JEPA), ``"smooth_l1"`` (I-JEPA: Huber with ``beta=1``, which on
            layer-normed features is mostly half the squared error) or ``"l2"`` (the squared
            error); the mean over every element.
        normalize_targets: Layer-norm the targets (turn off only for targets normalised
            already).

    Raises:
        ValueError: If ``distance`` is unknown.
    """

    name: ClassVar[str] = "latent"
    """Short name, used in logged tags (``train/loss_latent``)."""

    def __init__(self, distance: Distance = "smooth_l1", normalize_targets: bool = True) -> None:
        super().__init__()
        if distance not in ("l1", "smooth_l1", "l2"):
            raise ValueError(f"distance must be 'l1', 'smooth_l1' or 'l2', got {distance!r}")
        self.distance = distance
        self.normalize_targets = normalize_targets

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The mean distance between predictions and (layer-normed) targets.

        Args:
            predictions: ``(..., D)`` predicted features.
            targets: ``(..., D)`` target features, the same shape (detached here).

        Returns:
            A float32 scalar.

        Raises:
            ValueError: If the shapes differ.
        """
        if predictions.shape != targets.shape:
            raise ValueError(
                f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} "
                "differ in shape"
            )
        predictions, targets = predictions.float(), targets.detach().float()
        if self.normalize_targets:
            targets = F.layer_norm(targets, targets.shape[-1:])
        if self.distance == "l1":
            return F.l1_loss(predictions, targets)
        if self.distance == "smooth_l1":
            return F.smooth_l1_loss(predictions, targets, beta=1.0)
        return F.mse_loss(predictions, targets)

    def extra_repr(self) -> str:
        """The distance and the target normalisation."""
        return f"distance={self.distance!r}, normalize_targets={self.normalize_targets}"
