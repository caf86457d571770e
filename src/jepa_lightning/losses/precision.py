"""Where a loss computes: outside autocast, in float32 or wider."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

__all__ = ["autocast_disabled", "loss_dtype"]


def autocast_disabled(device_type: str) -> AbstractContextManager[Any]:
    """A context in which autocast is off on ``device_type``.

    Args:
        device_type: The inputs' device type (``"cpu"``, ``"cuda"``).

    Returns:
        ``torch.autocast(device_type, enabled=False)`` where autocast is on, else a no-op
        context: entering ``torch.autocast`` costs ~0.07 ms on the CPU, 2% of an InfoNCE loss
        over a batch of 256.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def loss_dtype(first: Tensor, second: Tensor) -> torch.dtype:
    """The dtype a loss over ``first`` and ``second`` computes in: theirs, at least float32.

    Args:
        first: One input.
        second: The other input.

    Returns:
        float32 for half-precision or float32 inputs, float64 if either is float64.
    """
    return torch.promote_types(torch.promote_types(first.dtype, second.dtype), torch.float32)
