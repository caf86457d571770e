"""Two DDP ranks (gloo, CPU) keep identical EMA target encoders through an I-JEPA fit.

Each rank builds its model from a different seed, reads different batches and draws different
masks; DDP broadcasts rank 0's weights at the start and all-reduces the gradients, and each
rank applies the same EMA rule with the same momentum, so after every step the target
encoders (and the context encoders) must be equal to the bit on both ranks, and moved away
from where they started. The parent polls the children with a deadline (see ``spawn.py``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_shapes_data
from ijepa_fit import tiny_ijepa
from lightning.pytorch import Callback, LightningModule, Trainer
from spawn import run_on_ranks

STEPS = 3


class TargetSnapshots(Callback):
    """The target encoder's weights after every optimizer step."""

    def __init__(self) -> None:
        self.snapshots: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        target = pl_module.model.target_encoder  # type: ignore[union-attr]
        self.snapshots.append([p.detach().clone() for p in target.parameters()])


def _fit(rank: int, shapes_root: str, folder: str) -> dict[str, Any]:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2")
    model = tiny_ijepa(ema_momentum=(0.9, 1.0))
    torch.manual_seed(100 + rank)  # different initial weights and masks on each rank
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    initial = [p.detach().clone() for p in model.model.target_encoder.parameters()]
    snapshots = TargetSnapshots()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        limit_val_batches=0,
        callbacks=[snapshots],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(model, tiny_shapes_data(Path(shapes_root), model))
    return {
        "initial": initial,
        "snapshots": snapshots.snapshots,
        "context": [p.detach().clone() for p in model.model.context_encoder.parameters()],
    }


@pytest.mark.slow
def test_target_encoders_stay_identical_on_every_rank(shapes_root: Path, tmp_path: Path) -> None:
    first, second = run_on_ranks(
        functools.partial(_fit, shapes_root=str(shapes_root), folder=str(tmp_path)),
        tmp_path,
        world_size=2,
        timeout_s=240,
    )
    assert len(first["snapshots"]) == len(second["snapshots"]) == STEPS
    for step in range(STEPS):
        for a, b in zip(first["snapshots"][step], second["snapshots"][step], strict=True):
            assert torch.equal(a, b), f"target encoders differ after step {step + 1}"
    for a, b in zip(first["context"], second["context"], strict=True):
        assert torch.equal(a, b)
    # The ranks started from different weights (DDP made them rank 0's) and the EMA moved them.
    assert not all(
        torch.equal(a, b) for a, b in zip(first["initial"], second["initial"], strict=True)
    )
    final, start = first["snapshots"][-1], first["snapshots"][0]
    assert not all(torch.equal(a, b) for a, b in zip(final, start, strict=True))
