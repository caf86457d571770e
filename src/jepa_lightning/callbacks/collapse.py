"""Collapse monitors for JEPA pretraining: per-dimension spread and effective rank."""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from jepa_lightning.callbacks.probes import step_tensor
from jepa_lightning.metrics import EffectiveRank


def normalized_std(features: Tensor) -> Tensor:
    """Per-dimension spread of feature vectors, scaled so that 1 is isotropic and 0 collapse.

    The rows are L2-normalised, the standard deviation of each dimension is taken over the
    rows, averaged over the dimensions and multiplied by ``sqrt(D)``: about 1 for vectors
    spread evenly on the sphere, 0 when every row is the same vector (complete collapse),
    small when the rows crowd into a few directions.

    Args:
        features: ``(..., D)`` feature vectors (every leading dimension is rows).

    Returns:
        A float32 scalar.
    """
    rows = F.normalize(features.reshape(-1, features.shape[-1]).float(), dim=-1)
    return rows.std(dim=0).mean() * math.sqrt(rows.shape[-1])


class CollapseMonitor(Callback):
    """Logs how spread out the features are, and warns when that falls.

    * ``collapse/std_predictions`` and ``collapse/std_targets``: :func:`normalized_std` of
      the predictor's outputs and of the target encoder's features at the target blocks of
      each training step (``outputs["predictions"]``, ``outputs["targets"]``; this rank's
      batch), written at the trainer's ``log_every_n_steps``;
    * ``collapse/rankme``: the effective rank (RankMe) of the validation set's pooled
      features (``outputs["features"]``), synced across ranks.

    From ``start_step`` on, a warning names a value that falls below ``fall_fraction`` of
    the best it has reached since (once, until it recovers), or a spread below ``min_std``:
    the usual signs that the encoder is collapsing, which the loss does not show (it falls as
    well when the targets collapse). The first steps are left out because a fresh predictor's
    outputs first shrink towards the mean target, which is learning, not collapse.

    Args:
        fall_fraction: Warn when a value drops below this fraction of its best.
        min_std: Warn when a spread is below this (whatever its best).
        start_step: Optimizer steps before values are compared and warned about.

    Raises:
        ValueError: If ``fall_fraction`` is not in ``(0, 1)``.
    """

    def __init__(
        self, fall_fraction: float = 0.5, min_std: float = 0.05, start_step: int = 200
    ) -> None:
        if not 0.0 < fall_fraction < 1.0:
            raise ValueError(f"fall_fraction must be in (0, 1), got {fall_fraction}")
        self.fall_fraction = fall_fraction
        self.min_std = min_std
        self.start_step = start_step
        self.rank = EffectiveRank()
        self.best: dict[str, float] = {}
        self.warned: set[str] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Moves the metric to the module's device."""
        self.rank.to(pl_module.device)

    def check(self, name: str, value: float, floor: float = 0.0) -> None:
        """Records ``value`` and warns (once until it recovers) if it has fallen.

        Args:
            name: The logged name.
            value: Its new value.
            floor: Warn below this too.
        """
        best = max(self.best.get(name, value), value)
        self.best[name] = best
        fallen = value < self.fall_fraction * best or value < floor
        if fallen and name not in self.warned:
            self.warned.add(name)
            rank_zero_warn(
                f"{name} fell to {value:.4g} (best {best:.4g}): the representation may be "
                "collapsing; check the EMA momentum, the learning rate and the masks"
            )
        elif not fallen:
            self.warned.discard(name)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Logs the spread of predictions and targets (written at the logging interval)."""
        name = type(self).__name__
        values = {
            "collapse/std_predictions": normalized_std(step_tensor(outputs, "predictions", name)),
            "collapse/std_targets": normalized_std(step_tensor(outputs, "targets", name)),
        }
        pl_module.log_dict(values)
        if trainer.global_step >= self.start_step:
            for key, value in values.items():
                self.check(key, float(value), self.min_std)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Accumulates the batch's pooled features."""
        self.rank.update(step_tensor(outputs, "features", type(self).__name__))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs RankMe of the validation features."""
        if not self.rank.update_count:
            return
        value = self.rank.compute()
        self.rank.reset()
        pl_module.log("collapse/rankme", value)
        if not trainer.sanity_checking and trainer.global_step >= self.start_step:
            self.check("collapse/rankme", float(value))
