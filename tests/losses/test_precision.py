from __future__ import annotations

import pytest
import torch

from jepa_lightning.losses.precision import autocast_disabled, loss_dtype


def test_autocast_disabled_turns_autocast_off_only_where_on() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast_disabled("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # restored on exit
    with autocast_disabled("cpu"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (torch.bfloat16, torch.bfloat16, torch.float32),
        (torch.float16, torch.float32, torch.float32),
        (torch.float32, torch.float64, torch.float64),
    ],
)
def test_loss_dtype_is_at_least_float32(
    first: torch.dtype, second: torch.dtype, expected: torch.dtype
) -> None:
    assert loss_dtype(torch.zeros(1, dtype=first), torch.zeros(1, dtype=second)) == expected
