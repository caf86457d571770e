"""Uniformity of embeddings on the hypersphere (Wang & Isola, 2020) as a torchmetrics metric.

``uniformity = log( mean_{i<j} exp(−t ‖x̂_i − x̂_j‖²) )`` over all pairs of rows seen, with
``x̂`` the L2-normalised embeddings. Lower is better (more uniformly spread embeddings).

The value is exact: the pairwise terms are computed in chunks of rows (never the full
``N × N`` matrix) and reduced with log-sum-exp for numerical stability.

Reference: T. Wang and P. Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from jepa_lightning.metrics.recall import (
    _auto_chunk_size,
    _cat_state,
    _check_embedding,
    _math_dtype,
    _normalize,
)

__all__ = ["Uniformity"]


class Uniformity(Metric):
    """Log of the mean Gaussian potential between all pairs of normalised embeddings.

    **Subsampling.** With ``max_samples=M``, all rows are still stored (``O(N · D)``), but
    :meth:`compute` evaluates the exact formula on a uniform random subset of ``M`` rows
    (without replacement), drawn with ``torch.randperm`` from a CPU ``torch.Generator``
    seeded with ``seed``. This caps the quadratic cost of :meth:`compute` at ``O(M² · D)``;
    the subset is deterministic given ``seed`` and the order of the rows (under DDP: the rows
    of rank 0, then rank 1, ...). A compute-time subset (rather than a per-process reservoir)
    is uniform over the rows of *all* processes and works with torchmetrics ``forward`` and
    state syncing. When ``N ≤ M`` all rows are used.

    **Distributed.** The embeddings are a list state concatenated across processes; each
    process must call :meth:`update` at least once before a synced :meth:`compute` (an empty
    ``(0, D)`` batch is fine).

    Args:
        t: Temperature ``t > 0`` of the Gaussian potential (2 in the paper).
        max_samples: If set, the number of rows ``M ≥ 2`` used by :meth:`compute` (see above).
        seed: Seed of the generator used to draw the subset when ``max_samples`` is set.
        chunk_size: Rows per chunk of pairwise distances. ``None`` picks about ``2**24 / N``.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``t`` is not positive, ``max_samples < 2`` or ``chunk_size < 1``.
        TypeError: If an argument has the wrong type.

    Example:
        >>> import torch
        >>> metric = Uniformity(t=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        >>> metric.compute()  # log(exp(-2 * 4))
        tensor(-8.)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    embeddings: list[Tensor]

    def __init__(
        self,
        t: float = 2,
        max_samples: int | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise TypeError(f"`t` must be a number, got {t!r}.")
        if not t > 0:
            raise ValueError(f"`t` must be positive, got {t}.")
        for name, value, minimum in (
            ("max_samples", max_samples, 2),
            ("chunk_size", chunk_size, 1),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an int or None, got {value!r}.")
            if value < minimum:
                raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {seed!r}.")
        self.t = float(t)
        self.max_samples = max_samples
        self.seed = seed
        self.chunk_size = chunk_size
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor) -> None:
        """Store a batch of embeddings (detached, L2-normalised, in the input dtype).

        Args:
            x: Embeddings of shape ``(B, D)``.

        Raises:
            TypeError: If ``x`` is not a floating point tensor.
            ValueError: If ``x`` is not 2-D or its dim differs from earlier updates.
        """
        _check_embedding("x", x)
        if isinstance(self.embeddings, list) and self.embeddings:
            expected = self.embeddings[0].shape[1]
            if x.shape[1] != expected:
                raise ValueError(
                    f"`x` has embedding dim {x.shape[1]}, but earlier updates had dim {expected}."
                )
        self.embeddings.append(_normalize(x))

    def compute(self) -> Tensor:
        """Return ``log mean_{i<j} exp(−t ‖x̂_i − x̂_j‖²)`` over the rows seen (all processes).

        Returns:
            A float32 scalar tensor.

        Raises:
            ValueError: If fewer than two rows were seen.
        """
        x = _cat_state(self.embeddings)
        n = 0 if x is None else x.shape[0]
        if x is None or n < 2:
            raise ValueError(
                f"Uniformity.compute() needs at least 2 rows of `x` in total, got {n}: call "
                "`update` with more data first."
            )
        if self.max_samples is not None and n > self.max_samples:
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n, generator=gen)[: self.max_samples].sort().values
            x = x[keep.to(x.device)]
            n = self.max_samples
        x = x.to(_math_dtype(x.dtype))
        chunk = self.chunk_size if self.chunk_size is not None else _auto_chunk_size(n)
        lse = _pairwise_logsumexp(x, self.t, chunk)
        n_pairs = n * (n - 1) / 2
        return (lse - math.log(n_pairs)).to(torch.float32)


def _pairwise_logsumexp(x: Tensor, t: float, chunk: int) -> Tensor:
    """``logsumexp_{i<j} (−t ‖x_i − x_j‖²)`` computed over row chunks.

    Args:
        x: Embeddings ``(N, D)``, ``N ≥ 2``.
        t: Temperature.
        chunk: Rows per chunk; chunk ``[a, b)`` is compared with columns ``[a, N)`` only.

    Returns:
        Scalar tensor in the dtype of ``x``.
    """
    n = x.shape[0]
    sq_norm = (x * x).sum(dim=1)
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    partial = []
    for start in range(0, n - 1, chunk):
        stop = min(start + chunk, n)
        rows = x[start:stop]
        cols = x[start:]
        # ‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b, clamped against rounding below 0.
        d2 = sq_norm[start:stop, None] + sq_norm[None, start:] - 2.0 * (rows @ cols.T)
        d2.clamp_min_(0)
        row_idx = torch.arange(start, stop, device=x.device)[:, None]
        col_idx = torch.arange(start, n, device=x.device)[None, :]
        logits = torch.where(col_idx > row_idx, d2.mul_(-t), neg_inf)
        partial.append(torch.logsumexp(logits.flatten(), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0)
