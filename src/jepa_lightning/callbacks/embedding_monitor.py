"""Alignment and uniformity of the predicted and target embeddings, in training and validation."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.utilities.distributed import gather_all_tensors

from jepa_lightning.callbacks.utils import (
    batch_embeddings,
    require_vl_jepa,
    validation_embeddings,
)
from jepa_lightning.distributed import is_distributed
from jepa_lightning.metrics import Alignment, Uniformity


class EmbeddingMonitor(Callback):
    """Logs alignment and uniformity (Wang & Isola, 2020) of ``ŝ`` and ``s``.

    Three values per stage: ``alignment`` of the pairs (predicted ``ŝ``, target ``s``),
    ``uniformity_predicted`` of ``ŝ`` and ``uniformity_text`` of ``s`` (lower is better for
    all three). Tags: ``train/<name>`` every ``every_n_steps`` optimizer steps, on the batch
    gathered from all ranks (recomputed without gradient, in train mode: dropout as the loss
    sees it), written straight to the loggers by rank 0; ``val/<name>`` over the whole
    validation set (metrics synced across ranks), logged with ``LightningModule.log``.

    Args:
        every_n_steps: Optimizer steps between two training measurements; default the
            trainer's ``log_every_n_steps``.
        alpha: Exponent of the alignment distance.
        t: Temperature of the uniformity potential.
        max_samples: Rows of the uniformity's pairwise computation (a seeded random subset
            when there are more), capping its quadratic cost.

    Raises:
        ValueError: If ``every_n_steps`` is below 1.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        alpha: float = 2,
        t: float = 2,
        max_samples: int | None = 4096,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step = 0
        # Training values come from already gathered rows: no sync on compute.
        self.train_metrics = _pair_metrics("train", alpha, t, max_samples, sync_on_compute=False)
        self.val_metrics = _pair_metrics("val", alpha, t, max_samples, sync_on_compute=True)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Checks the module and moves the metrics to its device."""
        require_vl_jepa(pl_module, type(self).__name__)
        self.train_metrics.to(pl_module.device)
        self.val_metrics.to(pl_module.device)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remembers the starting step (nonzero on resume): no step was just taken there."""
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Every ``every_n_steps`` steps, logs the metrics of the gathered batch."""
        # log_every_n_steps is set on the trainer at run time (0: logging disabled).
        every = self.every_n_steps or int(getattr(trainer, "log_every_n_steps", 0))
        step = trainer.global_step
        # The same decision on every rank (the gather is a collective). Only right after an
        # optimizer step: with gradient accumulation, micro-batches share a global_step.
        if not trainer.loggers or every == 0 or step % every != 0 or step == self._last_step:
            return
        self._last_step = step
        model = require_vl_jepa(pl_module, type(self).__name__)
        predicted, text = batch_embeddings(model, batch)
        self._update(self.train_metrics, _gathered(predicted), _gathered(text))
        values = self.train_metrics.compute()
        self.train_metrics.reset()
        # Straight to the loggers: LightningModule.log would repeat the last value at every
        # logging step until the next measurement. Lightning's step index of the optimizer
        # step just taken is global_step - 1, as for the loss.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in values.items()}, step=step - 1)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Accumulates the batch's embeddings."""
        self._update(self.val_metrics, *validation_embeddings(outputs, type(self).__name__))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs the metrics over the whole validation set."""
        pl_module.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    @staticmethod
    def _update(metrics: MetricCollection, predicted: Tensor, text: Tensor) -> None:
        metrics["alignment"].update(predicted, text)
        metrics["uniformity_predicted"].update(predicted)
        metrics["uniformity_text"].update(text)


def _pair_metrics(
    stage: str, alpha: float, t: float, max_samples: int | None, sync_on_compute: bool
) -> MetricCollection:
    """Alignment of (``ŝ``, ``s``) pairs and the uniformity of each side, tagged ``stage/``."""
    return MetricCollection(
        {
            "alignment": Alignment(alpha, sync_on_compute=sync_on_compute),
            "uniformity_predicted": Uniformity(
                t, max_samples=max_samples, sync_on_compute=sync_on_compute
            ),
            "uniformity_text": Uniformity(
                t, max_samples=max_samples, sync_on_compute=sync_on_compute
            ),
        },
        prefix=f"{stage}/",
        compute_groups=False,
    )


def _gathered(tensor: Tensor) -> Tensor:
    """Every rank's rows, concatenated (without gradient); the rows as they are on one process."""
    if not is_distributed():  # gather_all_tensors needs an initialised process group
        return tensor.detach()
    return torch.cat(gather_all_tensors(tensor.detach()))
