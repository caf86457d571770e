"""Discriminative VQA accuracy: the nearest candidate answer is the model's answer.

VL-JEPA answers a question without generating text: the predictor reads the image and the
question and predicts ``ŝ``; the Y-encoder embeds every candidate answer; the candidate
nearest to ``ŝ`` (cosine similarity) is the answer. The states are sums over questions, so
memory is ``O(1)`` in their number and the metric syncs across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from jepa_lightning.metrics.recall import _check_embedding, _math_dtype

__all__ = ["VQAAccuracy", "answer_targets", "padded_candidates"]


class VQAAccuracy(Metric):
    """Share of questions whose true answer is the candidate nearest to the prediction.

    **Hit test.** A question is answered correctly when no valid candidate scores strictly
    higher than its true answer (a tie counts for the true answer, as in
    :class:`~jepa_lightning.metrics.ZeroShotAccuracy`). Questions may have different numbers
    of candidates (padded, with ``candidate_mask``).

    **Chance.** :meth:`compute` also returns the accuracy of guessing uniformly among each
    question's candidates (the mean of ``1 / number of candidates``).

    Example:
        >>> import torch
        >>> metric = VQAAccuracy()
        >>> candidates = torch.eye(3).expand(2, 3, 3)
        >>> metric.update(torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.1]]), candidates,
        ...               torch.tensor([0, 2]))
        >>> metric.compute()["accuracy"]
        tensor(0.5000)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor
    chance: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "chance", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(
        self,
        predicted: Tensor,
        candidates: Tensor,
        target: Tensor,
        candidate_mask: Tensor | None = None,
    ) -> None:
        """Answers a batch of questions.

        Args:
            predicted: ``(B, D)`` predicted embeddings ``ŝ`` of (image, question).
            candidates: ``(B, C, D)`` embeddings ``s`` of each question's candidate answers.
            target: ``(B,)`` index of each question's true answer among its candidates.
            candidate_mask: ``(B, C)`` boolean, True for a real candidate; default all.

        Raises:
            TypeError: If an argument has the wrong kind of dtype.
            ValueError: If shapes disagree, or a target is not a real candidate.
        """
        _check_embedding("predicted", predicted)
        batch, dim = predicted.shape
        if candidates.dim() != 3 or candidates.shape[0] != batch or candidates.shape[2] != dim:
            raise ValueError(
                f"`candidates` must be ({batch}, C, {dim}), got {tuple(candidates.shape)}."
            )
        if not isinstance(target, Tensor) or target.is_floating_point() or target.shape != (batch,):
            raise TypeError(f"`target` must be an integer tensor of shape ({batch},).")
        mask = (
            torch.ones(candidates.shape[:2], dtype=torch.bool, device=candidates.device)
            if candidate_mask is None
            else candidate_mask.to(device=candidates.device, dtype=torch.bool)
        )
        if mask.shape != candidates.shape[:2]:
            raise ValueError(
                f"`candidate_mask` must be {tuple(candidates.shape[:2])}, got {tuple(mask.shape)}."
            )
        target = target.to(device=candidates.device, dtype=torch.int64)
        inside = (target >= 0) & (target < candidates.shape[1])
        if not bool(inside.all()) or not bool(mask.gather(1, target[:, None].clamp(0)).all()):
            raise ValueError(f"`target` must index real candidates, got {target.tolist()}.")
        dtype = _math_dtype(torch.promote_types(predicted.dtype, candidates.dtype))
        query = F.normalize(predicted.detach().to(dtype), dim=-1)
        answers = F.normalize(candidates.detach().to(dtype), dim=-1)
        scores = torch.einsum("bd,bcd->bc", query, answers)
        scores = scores.masked_fill(~mask, float("-inf"))
        true_score = scores.gather(1, target[:, None])
        self.correct += ((scores > true_score).sum(dim=1) == 0).sum().to(self.correct)
        self.total += batch
        self.chance += (1.0 / mask.sum(dim=1).double()).sum().to(self.chance)

    def compute(self) -> dict[str, Tensor]:
        """The accuracy and the chance level over all questions seen (on all processes).

        Returns:
            ``accuracy`` and ``chance``, float32 scalars.

        Raises:
            ValueError: If no question was seen.
        """
        if int(self.total) == 0:
            raise ValueError("VQAAccuracy.compute() called with no data: no question was seen.")
        return {
            "accuracy": (self.correct.double() / self.total).float(),
            "chance": (self.chance / self.total).float(),
        }


def answer_targets(metas: Sequence[Any]) -> tuple[list[int], list[list[str]], list[int]]:
    """The questions of a batch: rows with an ``answer`` among their ``candidates``.

    Args:
        metas: The samples' metadata dicts.

    Returns:
        The rows with a question, their candidate lists and the index of each true answer.

    Raises:
        ValueError: If a sample's answer is not one of its candidates.
    """
    rows, candidates, targets = [], [], []
    for row, meta in enumerate(metas):
        if not isinstance(meta, Mapping) or "answer" not in meta or "candidates" not in meta:
            continue
        options = [str(option) for option in meta["candidates"]]
        if meta["answer"] not in options:
            raise ValueError(f"answer {meta['answer']!r} is not among its candidates {options}")
        rows.append(row)
        candidates.append(options)
        targets.append(options.index(meta["answer"]))
    return rows, candidates, targets


def padded_candidates(
    candidates: Sequence[Sequence[str]], embed: Callable[[Sequence[str]], Tensor]
) -> tuple[Tensor, Tensor]:
    """The candidate answers' embeddings, padded to the longest list, and their mask.

    Args:
        candidates: Each question's candidate answers.
        embed: Embeds texts to ``(len(texts), D)``.

    Returns:
        ``(B, C, D)`` embeddings (zeros where padded) and the ``(B, C)`` mask of real ones.
    """
    embedded = [embed(options) for options in candidates]
    width = max(len(options) for options in candidates)
    first = embedded[0]
    values = first.new_zeros(len(candidates), width, first.shape[1])
    mask = torch.zeros(len(candidates), width, dtype=torch.bool, device=first.device)
    for position, rows in enumerate(embedded):
        values[position, : len(rows)] = rows
        mask[position, : len(rows)] = True
    return values, mask
