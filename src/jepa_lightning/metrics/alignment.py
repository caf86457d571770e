"""Alignment of positive pairs (Wang & Isola, 2020) as a torchmetrics metric.

``alignment = mean_i ‖x̂_i − ŷ_i‖^α`` over all pairs seen, with ``x̂``, ``ŷ`` the L2-normalised
embeddings. Lower is better (positives close together). The state is a running sum and a
count, so memory is ``O(1)`` regardless of the number of pairs.

Reference: T. Wang and P. Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from jepa_lightning.metrics.recall import _check_embedding, _math_dtype

__all__ = ["Alignment"]


class Alignment(Metric):
    """Mean ``α``-th power of the distance between normalised positive pairs.

    The per-pair distances are computed in float32 (float64 for float64 inputs) and summed into
    a float64 accumulator; the states are summed across processes.

    Args:
        alpha: Exponent ``α > 0`` applied to the Euclidean distance (2 in the paper).
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``alpha`` is not positive.

    Example:
        >>> import torch
        >>> metric = Alignment()
        >>> metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
        >>> metric.compute()
        tensor(2.0000)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    dist_sum: Tensor
    total: Tensor

    def __init__(self, alpha: float = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise TypeError(f"`alpha` must be a number, got {alpha!r}.")
        if not alpha > 0:
            raise ValueError(f"`alpha` must be positive, got {alpha}.")
        self.alpha = float(alpha)
        self.add_state(
            "dist_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, x: Tensor, y: Tensor) -> None:
        """Accumulate the distances of a batch of positive pairs.

        Args:
            x: Embeddings of shape ``(B, D)``.
            y: Embeddings of shape ``(B, D)``; row ``i`` is the positive of ``x[i]``.

        Raises:
            TypeError: If ``x`` or ``y`` is not a floating point tensor.
            ValueError: If ``x`` or ``y`` is not 2-D or their shapes differ.
        """
        _check_embedding("x", x)
        _check_embedding("y", y)
        if x.shape != y.shape:
            raise ValueError(
                f"`x` and `y` must have the same shape (B, D), got {tuple(x.shape)} and "
                f"{tuple(y.shape)}."
            )
        dtype = _math_dtype(torch.promote_types(x.dtype, y.dtype))
        x_n = F.normalize(x.detach().to(dtype), dim=-1)
        y_n = F.normalize(y.detach().to(dtype), dim=-1)
        dist = torch.linalg.vector_norm(x_n - y_n, dim=-1).pow(self.alpha)
        self.dist_sum += dist.sum().to(self.dist_sum)
        self.total += x.shape[0]

    def compute(self) -> Tensor:
        """Return the mean ``‖x̂ − ŷ‖^α`` over all pairs seen (on all processes).

        Returns:
            A float32 scalar tensor.

        Raises:
            ValueError: If no pairs were seen.
        """
        if int(self.total) == 0:
            raise ValueError(
                "Alignment.compute() called with no data: call `update` with non-empty `x` / `y` "
                "first."
            )
        return (self.dist_sum / self.total).to(torch.float32)
