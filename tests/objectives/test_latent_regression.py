"""The latent regression: distances to layer-normed targets against a hand computation."""

from __future__ import annotations

import pytest
import torch

from jepa_lightning.objectives import LatentRegression


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def _huber(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 1, 0.5 * d**2, d.abs() - 0.5)


@pytest.mark.parametrize(
    ("distance", "reference"),
    [("l1", torch.abs), ("l2", torch.square), ("smooth_l1", _huber)],
)
def test_distance_to_layer_normed_targets(distance, reference) -> None:
    g = torch.Generator().manual_seed(0)
    predictions = torch.randn(2, 4, 3, 8, generator=g)
    targets = 5 + 3 * torch.randn(2, 4, 3, 8, generator=g)
    loss = LatentRegression(distance)(predictions, targets)
    expected = reference(predictions - _layer_norm(targets)).mean()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_targets_are_normalised_so_their_scale_does_not_matter() -> None:
    g = torch.Generator().manual_seed(1)
    predictions, targets = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    loss = LatentRegression("l1")
    assert loss(predictions, targets).item() == pytest.approx(
        loss(predictions, 10 * targets + 3).item(), rel=1e-4
    )
    raw = LatentRegression("l1", normalize_targets=False)
    assert raw(predictions, targets).item() == pytest.approx(
        (predictions - targets).abs().mean().item(), rel=1e-6
    )


def test_only_the_predictions_get_a_gradient() -> None:
    predictions = torch.randn(3, 8, requires_grad=True)
    targets = torch.randn(3, 8, requires_grad=True)
    LatentRegression("l2")(predictions, targets).backward()
    assert predictions.grad is not None and predictions.grad.abs().sum() > 0
    assert targets.grad is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distance"):
        LatentRegression("cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        LatentRegression()(torch.zeros(2, 3), torch.zeros(2, 4))
