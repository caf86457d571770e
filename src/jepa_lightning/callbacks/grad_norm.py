"""The gradient norm, in total and per optimizer parameter group."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import grad_norm
from torch import Tensor
from torch.optim import Optimizer


class GradNormMonitor(Callback):
    """Logs ``train/grad_norm`` and ``train/grad_norm/<group name>`` before each optimizer step.

    The norms are those the optimizer will use: after gradient accumulation, AMP unscaling
    and the DDP all-reduce (Lightning calls ``on_before_optimizer_step`` then), before any
    gradient clipping. Per-parameter norms come from Lightning's ``grad_norm``; a group's
    norm is the norm of its parameters' norms. Groups without a ``name`` are called by their
    index.

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
        prefix = f"grad_{self.norm_type}_norm/"
        norms = grad_norm(pl_module, self.norm_type, group_separator="/")
        total = norms.pop(f"grad_{self.norm_type}_norm_total", None)
        if total is None:
            return
        by_param = {id(p): norms.get(prefix + name) for name, p in pl_module.named_parameters()}
        values: dict[str, Tensor] = {"train/grad_norm": torch.as_tensor(total)}
        for index, group in enumerate(optimizer.param_groups):
            found = [by_param[id(p)] for p in group["params"] if by_param.get(id(p)) is not None]
            if found:
                stacked = torch.stack([torch.as_tensor(norm) for norm in found])
                name = str(group.get("name", index))
                values[f"train/grad_norm/{name}"] = torch.linalg.vector_norm(
                    stacked, self.norm_type
                )
        pl_module.log_dict(values)
