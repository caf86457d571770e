from __future__ import annotations

import pytest
import torch
from callback_fit import events, fit, scalar_steps
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from jepa_lightning.callbacks import GradNormMonitor


class RecordNorm(Callback):
    """Brute-force norm of all gradients, taken at the same hook."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.cat(grads).norm().item())


def test_logs_total_and_group_norms(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    record = RecordNorm()
    trainer, log_dir = fit(tiny_model_kwargs, shapes_root, tmp_path, [GradNormMonitor(), record])
    accumulator = events(log_dir)
    assert scalar_steps(accumulator, "train/grad_norm") == [0, 1, 2, 3]
    logged = [event.value for event in accumulator.Scalars("train/grad_norm")]
    assert logged == pytest.approx(record.norms, rel=1e-5)
    groups = {g["name"] for g in trainer.optimizers[0].param_groups}
    assert {"head", "text_encoder"} <= groups
    for name in groups:
        assert len(accumulator.Scalars(f"train/grad_norm/{name}")) == 4


def test_rejects_bad_norm_type() -> None:
    with pytest.raises(ValueError, match="norm_type"):
        GradNormMonitor(norm_type=0)
