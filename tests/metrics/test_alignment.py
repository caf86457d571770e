from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.metrics import Alignment

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def reference_alignment(x: Tensor, y: Tensor, alpha: float) -> float:
    x = F.normalize(x.double(), dim=-1)
    y = F.normalize(y.double(), dim=-1)
    return (x - y).norm(dim=1).pow(alpha).mean().item()


@pytest.mark.parametrize("alpha", [1, 2, 3.5])
def test_matches_formula_over_several_updates(alpha: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(101, 16, generator=g, dtype=torch.float64)
    y = x + torch.randn(101, 16, generator=g, dtype=torch.float64)
    metric = Alignment(alpha=alpha)
    for sl in (slice(0, 30), slice(30, 31), slice(31, 101)):
        metric.update(x[sl], y[sl])
    result = metric.compute()
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(reference_alignment(x, y, alpha), rel=1e-6)


def test_float32_and_bfloat16_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    expected = reference_alignment(x, y, 2)
    metric = Alignment()
    metric.update(x, y)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    metric_bf16 = Alignment()
    metric_bf16.update(x.bfloat16(), y.bfloat16())
    assert metric_bf16.compute().item() == pytest.approx(expected, rel=2e-2)


def test_known_values_and_scale_invariance() -> None:
    metric = Alignment()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    metric.update(x, 5 * x)  # identical directions
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-7)
    metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 0.0]]))  # distance 2 -> 4
    assert metric.compute().item() == pytest.approx(4 / 3)


def test_forward_reset_and_attributes() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    metric = Alignment()
    batch = metric(x[:5], y[:5])
    assert batch.item() == pytest.approx(reference_alignment(x[:5], y[:5], 2), rel=1e-5)
    metric.update(x[5:], y[5:])
    assert metric.compute().item() == pytest.approx(reference_alignment(x, y, 2), rel=1e-5)
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.compute()
    assert Alignment.is_differentiable is False
    assert Alignment.higher_is_better is False
    assert Alignment.full_state_update is False


def test_input_is_detached() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    metric = Alignment()
    metric.update(x, x + 1)
    assert not metric.dist_sum.requires_grad


def test_validation() -> None:
    metric = Alignment()
    with pytest.raises(ValueError, match="`x` and `y` must have the same shape"):
        metric.update(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        metric.update(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="`y` must be a floating point"):
        metric.update(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="no data"):
        metric.compute()
    with pytest.raises(ValueError, match="`alpha` must be positive"):
        Alignment(alpha=0)
    with pytest.raises(TypeError, match="`alpha` must be a number"):
        Alignment(alpha="2")  # type: ignore[arg-type]
