"""The caption objective: symmetric InfoNCE between predicted ``ŝ`` and target ``s``."""

from __future__ import annotations

from torch import Tensor

from jepa_lightning.losses import InfoNCELoss
from jepa_lightning.models.vl_jepa import BatchForward
from jepa_lightning.objectives.base import Objective


class CaptionInfoNCE(Objective):
    """VL-JEPA's objective: ``ŝ`` (given the batch's query) must pick out its own ``s``.

    A learnable temperature (clamped to ``max_logit_scale`` after each step, as CLIP does)
    and negatives gathered from every rank (:class:`~jepa_lightning.losses.InfoNCELoss`).

    Args:
        weight: Weight of this loss in the total.
        init_temperature: Initial temperature (``logit_scale = log(1/T)``).
        max_logit_scale: Cap on ``1/T``.
    """

    name = "caption"

    def __init__(
        self, weight: float = 1.0, init_temperature: float = 0.07, max_logit_scale: float = 100.0
    ) -> None:
        super().__init__(weight)
        self.loss = InfoNCELoss(init_temperature=init_temperature, max_logit_scale=max_logit_scale)

    @property
    def temperature(self) -> float:
        """The effective (clamped) temperature."""
        return self.loss.temperature

    def forward(self, step: BatchForward) -> Tensor:
        """InfoNCE of the batch's (``ŝ``, ``s``) pairs.

        Args:
            step: The batch and its shared forward pieces.

        Returns:
            The scalar loss.
        """
        return self.loss(step.predicted, step.target)

    def after_optimizer_step(self) -> None:
        """Clamps ``logit_scale`` so that its gradient stays alive."""
        self.loss.clamp_logit_scale_()

    def logged_values(self) -> dict[str, float | Tensor]:
        """The temperature.

        Returns:
            ``{"temperature": T}``.
        """
        return {"temperature": self.temperature}
