"""JEPA pretraining of the X-encoder (I-JEPA): steps, EMA update, logging, optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from jepa_lightning.batch import Batch
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.models.ijepa import (
    DEFAULT_IJEPA_PREDICTOR_LM,
    IJEPAModel,
    IJEPAOutput,
    momentum_at,
)
from jepa_lightning.modules.checkpoints import finite_or_raise, under_cli
from jepa_lightning.modules.optim import GroupedOptimizer, parameter_groups
from jepa_lightning.objectives.latent_regression import LatentRegression


class IJEPA(GroupedOptimizer, LightningModule):
    """I-JEPA pretraining: a context encoder, its EMA target encoder and a narrow predictor.

    Each training step draws multi-block masks over the encoder's grid, encodes the visible
    (context) tokens with the context encoder, predicts the target encoder's features at each
    target block and regresses them (:class:`~jepa_lightning.objectives.LatentRegression`, on
    layer-normed targets). After each optimizer step the target encoder moves towards the
    context encoder with a momentum that rises linearly from ``ema_momentum[0]`` to
    ``ema_momentum[1]`` over the run. The target encoder is the one to keep: probes read its
    features and ``jepa-lightning export-encoder`` writes it as a VL-JEPA X-encoder.

    Reads the same shards as VL-JEPA (captions are decoded but unused). Every step returns
    ``features`` (the target encoder's mean-pooled features), ``predictions`` and ``targets``
    (detached) for the probe and collapse callbacks; validation returns the same.

    Args:
        encoder: The context encoder, trainable (``frozen: false``); its copy is the target.
        predictor_lm: Source of the predictor's transformer (a Llama-style config dict, hub
            name or folder).
        predictor_layers: Keep the LM's last this-many layers; default all.
        masking: :class:`~jepa_lightning.masking.MultiBlockMaskGenerator` arguments.
        loss: The latent regression (distance, target normalisation); default smooth L1 on
            layer-normed targets, as I-JEPA.
        ema_momentum: EMA momentum at the first and the last optimizer step.
        optimizer: Builds the optimizer from parameter groups (LightningCLI
            ``OptimizerCallable``); default AdamW(lr=1e-3, weight_decay=0.05,
            betas=(0.9, 0.98)). The encoder's group is scaled by its ``lr_multiplier``.
        lr_scheduler: Builds the scheduler (stepped every step); default linear warmup then
            cosine decay to ``min_lr_ratio``.
        warmup_steps: Warmup steps of the default schedule.
        min_lr_ratio: Final learning rate of the default schedule, as a fraction of the peak.

    Raises:
        ValueError: If ``ema_momentum`` is not ``0 <= start <= end <= 1``, or the encoder
            cannot be pretrained (see :class:`~jepa_lightning.models.IJEPAModel`).
    """

    def __init__(
        self,
        encoder: ModalityEncoder,
        predictor_lm: ModelSource = DEFAULT_IJEPA_PREDICTOR_LM,
        predictor_layers: int | None = None,
        masking: dict[str, Any] | None = None,
        loss: LatentRegression | None = None,
        ema_momentum: tuple[float, float] = (0.996, 1.0),
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        start, end = ema_momentum
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(
                f"ema_momentum must satisfy 0 <= start <= end <= 1, got {ema_momentum}"
            )
        modules = ["encoder", "loss", "optimizer", "lr_scheduler"]
        self.save_hyperparameters(ignore=[] if under_cli() else modules)
        self.model = IJEPAModel(encoder, predictor_lm, predictor_layers, masking)
        self.loss = loss if loss is not None else LatentRegression()
        self.ema_momentum = (float(start), float(end))
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self._total_steps: int | None = None

    def batch_collator(self) -> PairCollator:
        """The picklable collator for the data module: the encoder's codec, no tokenizer.

        There is no encoder fingerprint: the encoder trains, so a feature cache never applies
        (the data module refuses one).

        Returns:
            A collator that decodes the encoder's inputs and keeps captions as text.
        """
        return PairCollator(self.model.context_encoder.codec())

    def _forward(self, batch: Batch, generator: torch.Generator | None = None) -> IJEPAOutput:
        if batch.cached:
            raise ValueError(
                "IJEPA trains its encoder: it reads raw inputs, not a feature cache of tokens"
            )
        masks = self.model.draw_masks(len(batch), self.device, generator)
        return self.model(batch.x, masks)

    def _step_outputs(
        self, loss: Tensor, output: IJEPAOutput, valid: Tensor | None = None
    ) -> dict[str, Tensor]:
        pieces = {
            "features": output.features,
            "predictions": output.predictions,
            "targets": output.targets,
        }
        rows = slice(None) if valid is None else valid
        return {"loss": loss, **{name: t.detach()[rows] for name, t in pieces.items()}}

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Masks, predicts and regresses; logs the loss, the EMA momentum and learning rates.

        Returns:
            ``loss``, and detached ``features`` ``(B, D)``, ``predictions`` and ``targets``
            ``(B, T, Nb, D)`` for the callbacks.

        Raises:
            FloatingPointError: If the loss is not finite (on any rank).
        """
        output = self._forward(batch)
        loss = self.loss(output.predictions, output.targets)
        # The same decision on every rank, or the others would wait in the next all-reduce.
        if not self.trainer.strategy.reduce_boolean_decision(bool(loss.isfinite()), all=True):
            raise FloatingPointError(
                f"non-finite JEPA loss at global step {self.global_step} (rank "
                f"{self.global_rank}: {loss.item()}); lower the learning rate or raise "
                "warmup_steps"
            )
        size = len(batch)
        logged: dict[str, Any] = {
            "train/loss": loss,
            f"train/loss_{self.loss.name}": loss,
            "train/ema_momentum": self.current_momentum(),
        }
        groups = self.trainer.optimizers[0].param_groups
        logged.update({f"lr/{g['name']}": g["lr"] for g in groups})
        self.log_dict(logged, batch_size=size)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=size)
        return self._step_outputs(loss, output)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """The loss under masks fixed per batch index (comparable across validations).

        Returns:
            As :meth:`training_step`, the rows that count only (``batch.valid_rows()``: an
            evaluation batch's filler row is left out).
        """
        generator = torch.Generator().manual_seed(batch_idx)
        output = self._forward(batch, generator)
        loss = self.loss(output.predictions, output.targets)
        # A filler row only keeps the ranks in step: its loss weighs 0 in the epoch's mean.
        self.log("val/loss", loss, batch_size=len(batch.valid_rows()), sync_dist=True)
        return self._step_outputs(loss, output, batch.valid)

    def current_momentum(self) -> float:
        """The EMA momentum of the next target update (the schedule at ``global_step``).

        Returns:
            The momentum; the end value outside a fit.
        """
        if self._trainer is None or not self.trainer.training or self._total_steps is None:
            return self.ema_momentum[1]
        return momentum_at(self.trainer.global_step, self._total_steps, *self.ema_momentum)

    def on_train_start(self) -> None:
        """Reads the run's length (optimizer steps): the momentum schedule's."""
        self._total_steps = int(self.trainer.estimated_stepping_batches)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The optimizer step, then the EMA update of the target encoder.

        ``global_step`` still counts the steps before this one here, so the ``k``-th update
        (from 0) uses ``momentum_at(k, total)``; every rank uses the same momentum on the same
        (all-reduced) weights, so the target encoders stay identical.
        """
        momentum = self.current_momentum()
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.model.update_target(momentum)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses non-finite weights.

        Raises:
            FloatingPointError: If a weight is not finite (no checkpoint is written).
        """
        finite_or_raise(checkpoint["state_dict"], self.global_step)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the context encoder at its ``lr_multiplier``, the rest.

        Returns:
            See :func:`~jepa_lightning.modules.optim.parameter_groups`: ``context_encoder``
            and ``head`` (the predictor), each with a no-decay group for 1-D parameters.
        """
        encoder = self.model.context_encoder
        return parameter_groups(self, {"model.context_encoder": encoder.lr_multiplier})
