"""VQAAccuracy against a brute-force loop; chance level; padded candidates; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jepa_lightning.metrics.vqa import VQAAccuracy, answer_targets, padded_candidates


def brute_force(predicted, candidates, target, counts) -> tuple[float, float]:
    correct, chance = 0, 0.0
    for row in range(len(predicted)):
        options = F.normalize(candidates[row, : counts[row]], dim=-1)
        scores = [float(F.normalize(predicted[row], dim=0) @ option) for option in options]
        correct += (
            max(range(counts[row]), key=lambda i: (scores[i], i == target[row])) == target[row]
        )
        chance += 1 / counts[row]
    return correct / len(predicted), chance / len(predicted)


def test_matches_brute_force_over_several_updates() -> None:
    generator = torch.Generator().manual_seed(0)
    metric = VQAAccuracy()
    rows = []
    for batch in (5, 7, 3):
        predicted = torch.randn(batch, 8, generator=generator)
        candidates = torch.randn(batch, 4, 8, generator=generator)
        counts = torch.randint(2, 5, (batch,), generator=generator)
        mask = torch.arange(4)[None, :] < counts[:, None]
        target = (torch.rand(batch, generator=generator) * counts).long()
        candidates[0, target[0]] = predicted[0] * 3  # at least one sure hit
        metric.update(predicted, candidates, target, mask)
        rows.append((predicted, candidates, target, counts))
    accuracy, chance = brute_force(*(torch.cat(parts) for parts in zip(*rows, strict=True)))
    result = metric.compute()
    assert result["accuracy"].item() == pytest.approx(accuracy)
    assert result["chance"].item() == pytest.approx(chance)
    assert 0 < accuracy < 1


def test_padded_candidates_never_win() -> None:
    metric = VQAAccuracy()
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    metric.update(
        torch.tensor([[1.0, 1.0]]), candidates, torch.tensor([0]), torch.tensor([[1, 1, 0]])
    )
    assert metric.compute() == {"accuracy": torch.tensor(1.0), "chance": torch.tensor(0.5)}


def test_bad_input_and_no_data() -> None:
    metric = VQAAccuracy()
    with pytest.raises(ValueError, match="no data"):
        metric.compute()
    with pytest.raises(ValueError, match="must index real candidates"):
        metric.update(
            torch.ones(1, 2), torch.ones(1, 2, 2), torch.tensor([1]), torch.tensor([[1, 0]])
        )
    with pytest.raises(ValueError, match=r"`candidates` must be \(1, C, 2\)"):
        metric.update(torch.ones(1, 2), torch.ones(1, 3), torch.tensor([0]))


def test_questions_of_a_batch_and_their_padded_candidates() -> None:
    metas = [
        {"query": "q", "answer": "b", "candidates": ["a", "b"]},
        {},
        {"query": "q", "answer": "z", "candidates": ["x", "y", "z"]},
    ]
    rows, candidates, targets = answer_targets(metas)
    assert (rows, candidates, targets) == ([0, 2], [["a", "b"], ["x", "y", "z"]], [1, 2])
    values, mask = padded_candidates(candidates, lambda texts: torch.ones(len(texts), 3))
    assert values.shape == (2, 3, 3) and mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert values[0, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="'c' is not among its candidates"):
        answer_targets([{"answer": "c", "candidates": ["a"]}])
