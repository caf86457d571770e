"""Effective rank of embeddings (RankMe) as a torchmetrics metric.

``RankMe(Z) = exp(−Σ_k p_k log p_k)`` with ``p_k = σ_k / Σ_j σ_j + ε`` and ``σ`` the singular
values of the ``N × D`` matrix of embeddings: between 1 (every embedding on one line: collapse)
and ``min(N, D)`` (singular values all equal). A drop during self-supervised pretraining
signals (dimensional) collapse, without labels.

Reference: Q. Garrido, R. Balestriero, L. Najman and Y. LeCun, "RankMe: Assessing the
Downstream Performance of Pretrained Self-Supervised Representations by Their Rank", ICML 2023.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["EffectiveRank", "effective_rank"]

EPSILON = 1e-7
"""The paper's ``ε``, added to each normalised singular value."""


def effective_rank(embeddings: Tensor) -> Tensor:
    """RankMe of a matrix of embeddings.

    Args:
        embeddings: ``(N, D)`` embeddings (not normalised, not centred: as the paper).

    Returns:
        A float32 scalar in ``[1, min(N, D)]`` (up to ``ε``).
    """
    singular = torch.linalg.svdvals(embeddings.double())
    p = singular / singular.sum() + EPSILON
    return torch.exp(-(p * p.log()).sum()).float()


class EffectiveRank(Metric):
    """RankMe of every embedding seen (all processes): :func:`effective_rank` of their rows.

    The embeddings are a list state concatenated across processes (memory ``O(N · D)``); the
    singular values are computed once, in :meth:`compute`, in float64.

    Args:
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    embeddings: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor) -> None:
        """Stores a batch of embeddings.

        Args:
            embeddings: ``(B, D)`` embeddings.

        Raises:
            ValueError: If ``embeddings`` is not 2-D.
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
        self.embeddings.append(embeddings.detach().float())

    def compute(self) -> Tensor:
        """RankMe of all rows seen.

        Returns:
            A float32 scalar.

        Raises:
            ValueError: If no row was seen.
        """
        rows = dim_zero_cat(self.embeddings) if self.embeddings else None
        if rows is None or rows.shape[0] == 0:
            raise ValueError("EffectiveRank.compute() needs embeddings: call update first")
        return effective_rank(rows)
