"""The gradient norm, in total and per optimizer parameter group."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.optim import Optimizer


class GradNormMonitor(Callback):
    """Logs ``train/grad_norm`` and ``train/grad_norm/<group name>`` before each optimizer step.

    The norms are those the optimizer will use: after gradient accumulation, AMP unscaling
    and the DDP all-reduce (Lightning calls ``on_before_optimizer_step`` then), before any
    gradient clipping. Groups without a ``name`` are called by their index.

    Args:
        norm_type: The ``p`` of the p-norm.

    Raises:
        ValueError: If ``norm_type`` is not positive.
    """

    def __init__(self, norm_type: float = 2.0) -> None:
        if not norm_type > 0:
            raise ValueError(f"norm_type must be > 0, got {norm_type}")
        self.norm_type = float(norm_type)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        """Logs the norms of the gradients about to be applied."""
        group_norms: dict[str, Tensor] = {}
        for index, group in enumerate(optimizer.param_groups):
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads:
                name = str(group.get("name", index))
                group_norms[name] = self._norm(
                    [torch.linalg.vector_norm(g.detach(), self.norm_type) for g in grads]
                )
        if not group_norms:
            return
        values = {f"train/grad_norm/{name}": norm for name, norm in group_norms.items()}
        # The norm of the per-group norms is the norm over all gradients.
        values["train/grad_norm"] = self._norm(list(group_norms.values()))
        pl_module.log_dict(values)

    def _norm(self, norms: list[Tensor]) -> Tensor:
        return torch.linalg.vector_norm(torch.stack(norms), self.norm_type)
