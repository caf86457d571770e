"""The optimizer and learning-rate schedule that the LightningModules share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

OptimizerAndScheduler = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]

HEAD = "head"
"""The group of every trainable parameter outside the submodules given multipliers."""


def parameter_groups(
    module: nn.Module, lr_multipliers: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: a learning-rate multiplier per submodule, no decay on 1-D.

    Each submodule named in ``lr_multipliers`` (a dotted path such as ``"model.x_encoder"``)
    gives two groups named after its last part (``x_encoder`` and ``x_encoder_no_decay``);
    every other trainable parameter goes to ``head`` / ``head_no_decay`` at multiplier 1.
    Biases, norm weights and scalars (parameters with fewer than 2 dimensions) get no weight
    decay. Frozen parameters are left out.

    Args:
        module: The module whose trainable parameters are grouped.
        lr_multipliers: Submodule path → learning-rate multiplier.

    Returns:
        Groups with ``params``, ``name``, ``lr_multiplier`` and, for the no-decay ones,
        ``weight_decay=0``, sorted by name.
    """
    owners = {path: path.rsplit(".", 1)[-1] for path in lr_multipliers}
    multipliers = {owners[path]: value for path, value in lr_multipliers.items()}
    grouped: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            owner = next((o for path, o in owners.items() if name.startswith(f"{path}.")), HEAD)
            grouped.setdefault((owner, param.ndim >= 2), []).append(param)
    groups = []
    for (owner, decay), params in sorted(grouped.items()):
        group: dict[str, Any] = {
            "params": params,
            "name": f"{owner}{'' if decay else '_no_decay'}",
            "lr_multiplier": multipliers.get(owner, 1.0),
        }
        if not decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


def build_optimizer(
    groups: list[dict[str, Any]],
    total_steps: int,
    optimizer: OptimizerCallable | None = None,
    lr_scheduler: LRSchedulerCallable | None = None,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.01,
) -> OptimizerAndScheduler:
    """The optimizer over parameter groups and its per-step scheduler.

    Args:
        groups: Parameter groups with ``lr_multiplier`` (see :func:`parameter_groups`).
        total_steps: Optimizer steps of the whole run (the default schedule's length).
        optimizer: Builds the optimizer from the groups (the LightningCLI
            ``OptimizerCallable``); default AdamW(lr=1e-3, weight_decay=0.05,
            betas=(0.9, 0.98)), fused where the parameters' device has the kernel (CUDA,
            and the CPU from torch 2.4: one kernel instead of a loop over parameters). Each
            group's learning rate is then scaled by its multiplier.
        lr_scheduler: Builds the scheduler; default linear warmup over ``warmup_steps`` then
            cosine decay to ``min_lr_ratio`` of the peak at ``total_steps``.
        warmup_steps: Warmup steps of the default schedule.
        min_lr_ratio: Final learning rate of the default schedule, as a fraction of the peak.

    Returns:
        The optimizer and its learning-rate scheduler.
    """
    if optimizer is None:
        built: torch.optim.Optimizer
        defaults: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.98)}
        try:
            built = torch.optim.AdamW(groups, **defaults, fused=True)
        except RuntimeError:  # no fused kernel for these parameters' device or dtype
            built = torch.optim.AdamW(groups, **defaults)
    else:
        built = optimizer(groups)
    for group in built.param_groups:
        group["lr"] *= group["lr_multiplier"]
    if lr_scheduler is not None:
        return built, lr_scheduler(built)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        built, warmup_steps, total_steps, min_lr_rate=min_lr_ratio
    )
    return built, scheduler


def stepped_optimizer_config(
    trainer: Trainer, build: Callable[[int], OptimizerAndScheduler]
) -> OptimizerLRSchedulerConfig:
    """``configure_optimizers``'s answer: ``build(total_steps)``, the scheduler stepped per step.

    Args:
        trainer: The trainer (its estimated number of optimizer steps is the run's length).
        build: Builds the optimizer and scheduler for a run of that many steps.

    Returns:
        The optimizer and a per-step scheduler config.

    Raises:
        ValueError: If the run has no finite length (set ``trainer.max_steps``).
    """
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ValueError(
            "the learning-rate schedule needs a finite run: set trainer.max_steps "
            "(streaming data has no epoch length)"
        )
    optimizer, scheduler = build(int(total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class GroupedOptimizer(ABC):
    """A LightningModule mixin: the optimizer and schedule from ``parameter_groups()``.

    The module implements :meth:`parameter_groups` and sets ``optimizer_factory``,
    ``scheduler_factory``, ``warmup_steps`` and ``min_lr_ratio`` (see :func:`build_optimizer`);
    the mixin gives it :meth:`build_optimizer` and ``configure_optimizers``. List it before
    ``LightningModule`` among the bases.
    """

    optimizer_factory: OptimizerCallable | None
    scheduler_factory: LRSchedulerCallable | None
    warmup_steps: int
    min_lr_ratio: float

    @abstractmethod
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (see :func:`parameter_groups`)."""

    def build_optimizer(self, total_steps: int) -> OptimizerAndScheduler:
        """The optimizer over :meth:`parameter_groups` and its per-step scheduler.

        Args:
            total_steps: Optimizer steps of the whole run (the default schedule's length).

        Returns:
            The optimizer and its learning-rate scheduler.
        """
        return build_optimizer(
            self.parameter_groups(),
            total_steps,
            self.optimizer_factory,
            self.scheduler_factory,
            self.warmup_steps,
            self.min_lr_ratio,
        )

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """:meth:`build_optimizer` for the trainer's run, the scheduler stepped per step.

        Raises:
            ValueError: If the run has no finite length (set ``trainer.max_steps``).
        """
        module = cast(LightningModule, self)  # the mixin is a LightningModule's base
        return stepped_optimizer_config(module.trainer, self.build_optimizer)
