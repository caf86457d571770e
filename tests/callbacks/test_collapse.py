"""Collapse monitors: spread and effective rank against hand computations, and the warnings."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from ijepa_fit import RecordFeatures, fit_ijepa

from jepa_lightning.callbacks import CollapseMonitor
from jepa_lightning.callbacks.collapse import normalized_std
from jepa_lightning.metrics import EffectiveRank
from jepa_lightning.metrics.effective_rank import effective_rank


def test_normalized_std_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 5, generator=g) + 0.5
    rows = x.reshape(-1, 5)
    rows = rows / rows.norm(dim=1, keepdim=True)
    stds = []
    for d in range(5):
        column = rows[:, d]
        mean = column.mean()
        stds.append(math.sqrt(float(((column - mean) ** 2).sum()) / (len(column) - 1)))
    assert float(normalized_std(x)) == pytest.approx(sum(stds) / 5 * math.sqrt(5), rel=1e-5)


def test_normalized_std_is_one_when_isotropic_and_zero_when_collapsed() -> None:
    g = torch.Generator().manual_seed(1)
    assert float(normalized_std(torch.randn(20000, 16, generator=g))) == pytest.approx(1, abs=0.02)
    collapsed = torch.randn(1, 16, generator=g).expand(100, -1) * torch.rand(100, 1, generator=g)
    assert float(normalized_std(collapsed)) == pytest.approx(0, abs=1e-5)


def test_effective_rank_against_the_formula() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(50, 8, generator=g) @ torch.diag(torch.tensor([4.0, 2, 1, 1, 0.5, 0.1, 0, 0]))
    singular = torch.linalg.svdvals(z.double())
    p = singular / singular.sum() + 1e-7
    assert float(effective_rank(z)) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert float(effective_rank(torch.eye(6))) == pytest.approx(6, rel=1e-5)
    line = torch.randn(30, 1, generator=g) * torch.randn(1, 6, generator=g)
    assert float(effective_rank(line)) == pytest.approx(1, rel=1e-4)


def test_effective_rank_metric_accumulates_rows() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 7, generator=g)
    metric = EffectiveRank()
    for chunk in z.split(15):
        metric.update(chunk)
    assert float(metric.compute()) == pytest.approx(float(effective_rank(z)), rel=1e-6)
    with pytest.raises(ValueError, match="update"):
        EffectiveRank().compute()


def test_a_fall_warns_once_until_it_recovers() -> None:
    monitor = CollapseMonitor(fall_fraction=0.5, min_std=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for value in (0.8, 0.9, 0.6, 0.44, 0.3, 0.7, 0.2):
            monitor.check("collapse/std_targets", value)
        monitor.check("collapse/std_predictions", 0.05, floor=0.1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert messages[0].startswith("collapse/std_targets fell to 0.44 (best 0.9)")
    assert messages[1].startswith("collapse/std_targets fell to 0.2 (best 0.9)")
    assert messages[2].startswith("collapse/std_predictions fell to 0.05")


def test_fit_logs_spreads_and_the_rank_of_the_validation_features(shapes_root, tmp_path) -> None:
    record = RecordFeatures()
    _, trainer = fit_ijepa(shapes_root, tmp_path, [CollapseMonitor(start_step=0), record])
    metrics = trainer.callback_metrics
    for name in ("collapse/std_predictions", "collapse/std_targets"):
        assert 0 < float(metrics[name]) < 2
    expected = effective_rank(torch.cat(record.features))
    assert float(metrics["collapse/rankme"]) == pytest.approx(float(expected), rel=1e-5)
