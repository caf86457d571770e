"""The Trainer of the ``jepa-lightning`` command: Lightning's, plus ``precision="auto"``."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch import Trainer as LightningTrainer

from jepa_lightning.allocator import keep_freed_memory

AUTO = "auto"

PrecisionChoice = _PRECISION_INPUT | Literal["auto"]
"""Lightning's precision values, or ``"auto"``."""


def bf16_supported(accelerator: str = AUTO) -> bool:
    """Whether the device that ``accelerator`` picks runs bfloat16 natively.

    A CUDA GPU counts when ``torch.cuda.is_bf16_supported()`` (Ampere and newer); a CPU when
    it has AVX512-BF16 or AMX instructions (elsewhere bfloat16 is emulated, slower than
    float32).

    Args:
        accelerator: The trainer's ``accelerator``: ``"auto"`` (a GPU when one is visible),
            ``"gpu"``/``"cuda"``, ``"cpu"``, or any other (counted as unsupported).

    Returns:
        True where bf16-mixed training is native on that device.
    """
    if accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator not in ("cpu", AUTO):
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: PrecisionChoice | None, accelerator: str = AUTO) -> Any:
    """``precision``, with ``"auto"`` replaced by ``"bf16-mixed"`` or ``"32-true"``.

    Args:
        precision: A Lightning precision value, ``"auto"`` or None (Lightning's default).
        accelerator: The trainer's ``accelerator`` (see :func:`bf16_supported`).

    Returns:
        ``"bf16-mixed"`` for ``"auto"`` where :func:`bf16_supported`, ``"32-true"`` for
        ``"auto"`` elsewhere, any other value unchanged.
    """
    if precision != AUTO:
        return precision
    return "bf16-mixed" if bf16_supported(accelerator) else "32-true"


class Trainer(LightningTrainer):
    """Lightning's ``Trainer`` that also takes ``precision="auto"``.

    ``"auto"`` trains in ``bf16-mixed`` where the device runs bfloat16 natively (a CUDA GPU
    with bf16 support; a CPU with AVX512-BF16 or AMX) and in ``32-true`` elsewhere. Every
    other argument is Lightning's. Building one also makes ``malloc`` keep the memory a step
    frees for the next step (:func:`jepa_lightning.allocator.keep_freed_memory`).

    Args:
        precision: A Lightning precision value or ``"auto"``.
        **kwargs: Lightning's ``Trainer`` arguments.
    """

    def __init__(self, *, precision: PrecisionChoice | None = None, **kwargs: Any) -> None:
        accelerator = kwargs.get("accelerator", AUTO)
        # An Accelerator instance is not assumed to run bf16 ("auto" gives 32-true there).
        name = accelerator.lower() if isinstance(accelerator, str) else "other"
        super().__init__(precision=resolve_precision(precision, name), **kwargs)
        keep_freed_memory()
