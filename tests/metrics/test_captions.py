"""CaptionQuality against ROUGE-L and exact match computed by hand."""

from __future__ import annotations

import pytest
import torch

from jepa_lightning.metrics.captions import CaptionQuality, normalize_caption


def test_rouge_l_and_exact_match_against_a_hand_computation() -> None:
    metric = CaptionQuality()
    # 1. LCS "a red circle on the" = 5 of 7 tokens each way: P = R = F = 5/7.
    # 2. identical (up to case and spaces): F = 1, an exact match.
    # 3. LCS "a red circle" = 3: P = 3/3, R = 3/7, F = 2PR / (P + R) = 0.6.
    metric.update(
        ["a small red circle on the left", "A blue  square"],
        ["a large red circle on the right", "a blue square"],
    )
    metric.update(["a red circle"], ["a small red circle on the left"])
    scores = metric.compute()
    torch.testing.assert_close(scores["rougeL"], torch.tensor((5 / 7 + 1 + 0.6) / 3))
    torch.testing.assert_close(scores["exact_match"], torch.tensor(1 / 3))


def test_pairs_must_match_and_nothing_is_nan() -> None:
    metric = CaptionQuality()
    with pytest.raises(ValueError, match="2 predicted captions for 1 true"):
        metric.update(["a", "b"], ["a"])
    metric.update([], [])
    assert metric.compute()["rougeL"].isnan()
    assert normalize_caption("  A Red\tcircle ") == "a red circle"
