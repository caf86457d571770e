"""Quality of generated captions against the true ones: exact match and ROUGE-L.

Used for the Y-decoder's validation (one pair per image) and for caption quality over time
on a stream (one pair per instant: the caption in force then, and the true one). The states
are sums over pairs, so memory is ``O(1)`` and the metric syncs across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.text import rouge_score

__all__ = ["CaptionQuality", "normalize_caption"]


def normalize_caption(text: str) -> str:
    """Lower case, single spaces, no surrounding space: how captions are compared.

    Args:
        text: A caption.

    Returns:
        The normalised caption.
    """
    return " ".join(text.lower().split())


class CaptionQuality(Metric):
    """Exact-match rate and mean ROUGE-L F-measure of predicted captions.

    ROUGE-L is ``torchmetrics``' (longest common subsequence of whitespace tokens after its
    normalisation; no stemmer, so no ``nltk``), averaged over pairs. Exact match compares
    :func:`normalize_caption` forms.

    Example:
        >>> metric = CaptionQuality()
        >>> metric.update(["a red circle", "a blue square"], ["a red circle", "a green square"])
        >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
        {'exact_match': 0.5, 'rougeL': 0.8333}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    exact: Tensor
    rouge: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "exact", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "rouge", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        """Adds pairs of a predicted and a true caption.

        Args:
            preds: Predicted captions.
            targets: The true captions, one per prediction.

        Raises:
            ValueError: If the counts differ.
        """
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predicted captions for {len(targets)} true ones")
        if not preds:
            return
        pairs = [
            (normalize_caption(p), normalize_caption(t))
            for p, t in zip(preds, targets, strict=True)
        ]
        self.exact += sum(p == t for p, t in pairs)
        # rouge_score averages over the pairs; times their number is their sum.
        scores = rouge_score(list(preds), list(targets), rouge_keys="rougeL")
        self.rouge += scores["rougeL_fmeasure"].double() * len(pairs)
        self.total += len(pairs)

    def compute(self) -> dict[str, Tensor]:
        """The rates over every pair so far.

        Returns:
            ``exact_match`` and ``rougeL`` (mean F-measure), float32; NaN with no pair.
        """
        total = self.total.double()
        return {
            "exact_match": (self.exact / total).float(),
            "rougeL": (self.rouge / total).float(),
        }
