"""The objective contract: a weighted loss over one batch's shared forward pieces."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from jepa_lightning.models.vl_jepa import BatchForward, VLJEPAModel


class Objective(nn.Module, ABC):
    """One training objective: its loss, its weight and any state it owns (heads, masks).

    A LightningModule sums ``weight * objective(forward)`` over its objectives; adding an
    objective means writing a subclass and naming it in the config, nothing else.

    Args:
        weight: Weight of this loss in the total.

    Raises:
        ValueError: If ``weight`` is not positive.
    """

    name: ClassVar[str]
    """Short name, used in logged tags (``train/loss_<name>``)."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"{type(self).__name__}: weight must be positive, got {weight}")
        self.weight = weight

    def bind(self, model: VLJEPAModel) -> None:
        """Builds the state that depends on the model (heads sized by it); once, at assembly.

        Args:
            model: The model core this objective trains.
        """

    @abstractmethod
    def forward(self, step: BatchForward) -> Tensor:
        """The loss of one batch.

        Args:
            step: The batch and its shared forward pieces.

        Returns:
            A scalar loss.
        """

    def after_optimizer_step(self) -> None:
        """Applies rules that follow each optimizer step (e.g. a parameter clamp)."""

    def logged_values(self) -> dict[str, float | Tensor]:
        """Values worth logging each step (e.g. a learned temperature), by short name.

        Returns:
            An empty dict unless a subclass has something to report.
        """
        return {}
