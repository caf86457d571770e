from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.metrics import Uniformity

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def reference_uniformity(x: Tensor, t: float) -> float:
    """Direct formula with torch.pdist (all pairs i<j), log-sum-exp for stability."""
    sq = torch.pdist(F.normalize(x.double(), dim=-1), p=2).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


def test_reference_agrees_with_naive_formula() -> None:
    x = torch.randn(20, 5, dtype=torch.float64)
    naive = torch.pdist(F.normalize(x, dim=-1)).pow(2).mul(-2).exp().mean().log().item()
    assert reference_uniformity(x, 2) == pytest.approx(naive, rel=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, None])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_matches_pdist_over_several_updates(chunk_size: int | None, t: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(53, 8, generator=g, dtype=torch.float64)
    metric = Uniformity(t=t, chunk_size=chunk_size)
    for sl in (slice(0, 10), slice(10, 11), slice(11, 53)):
        metric.update(x[sl])
    result = metric.compute()
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(reference_uniformity(x, t), rel=1e-6)


def test_float32_inputs() -> None:
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    metric = Uniformity(chunk_size=6)
    metric.update(x)
    assert metric.compute().item() == pytest.approx(reference_uniformity(x, 2), rel=1e-5)


def test_numerically_stable_for_large_t() -> None:
    # exp(-t d²) underflows to 0 in float64 for every pair: the naive formula gives -inf.
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = 1e4
    naive = torch.pdist(F.normalize(x, dim=-1)).pow(2).mul(-t).exp().mean().log().item()
    assert naive == -math.inf
    metric = Uniformity(t=t, chunk_size=4)
    metric.update(x)
    result = metric.compute().item()
    assert math.isfinite(result)
    assert result == pytest.approx(reference_uniformity(x, t), rel=1e-6)


def test_known_value() -> None:
    metric = Uniformity(t=1)
    metric.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    # squared distances: 2, 4, 2
    expected = math.log((2 * math.exp(-2) + math.exp(-4)) / 3)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


def test_max_samples_is_a_seeded_uniform_subset() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    metric = Uniformity(max_samples=20, seed=123, chunk_size=7)
    metric.update(x[:25])
    metric.update(x[25:])
    keep = torch.randperm(50, generator=torch.Generator().manual_seed(123))[:20]
    result = metric.compute().item()
    assert result == pytest.approx(reference_uniformity(x[keep], 2), rel=1e-6)
    # deterministic given the seed, different for another seed
    again = Uniformity(max_samples=20, seed=123)
    again.update(x)
    assert again.compute().item() == pytest.approx(result, rel=1e-6)
    other = Uniformity(max_samples=20, seed=7)
    other.update(x)
    assert other.compute().item() != pytest.approx(result, rel=1e-6)
    # max_samples >= N: every row is used
    all_rows = Uniformity(max_samples=50)
    all_rows.update(x)
    assert all_rows.compute().item() == pytest.approx(reference_uniformity(x, 2), rel=1e-6)


def test_storage_dtype_detached_normalised() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    metric = Uniformity()
    metric.update(3 * x.bfloat16())
    stored = metric.embeddings[0]
    assert stored.dtype == torch.bfloat16
    assert not stored.requires_grad
    torch.testing.assert_close(stored.float().norm(dim=1), torch.ones(6), atol=1e-2, rtol=0)


def test_forward_reset_and_attributes() -> None:
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(4))
    metric = Uniformity()
    assert metric(x[:8]).item() == pytest.approx(reference_uniformity(x[:8], 2), rel=1e-5)
    metric.update(x[8:])
    assert metric.compute().item() == pytest.approx(reference_uniformity(x, 2), rel=1e-5)
    metric.reset()
    metric.update(x[:1])
    with pytest.raises(ValueError, match="at least 2 rows"):
        metric.compute()
    assert Uniformity.is_differentiable is False
    assert Uniformity.higher_is_better is False
    assert Uniformity.full_state_update is False


def test_validation() -> None:
    metric = Uniformity()
    with pytest.raises(ValueError, match="at least 2 rows"):
        metric.compute()
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        metric.update(torch.randn(3))
    with pytest.raises(TypeError, match="`x` must be a floating point"):
        metric.update(torch.ones(3, 2, dtype=torch.long))
    metric.update(torch.randn(3, 2))
    with pytest.raises(ValueError, match="earlier updates had dim 2"):
        metric.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="`t` must be positive"):
        Uniformity(t=-1)
    with pytest.raises(ValueError, match="`max_samples` must be at least 2"):
        Uniformity(max_samples=1)
    with pytest.raises(ValueError, match="`chunk_size` must be at least 1"):
        Uniformity(chunk_size=0)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        Uniformity(seed=1.5)  # type: ignore[arg-type]
