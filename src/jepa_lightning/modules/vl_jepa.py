"""VL-JEPA training: assembles the model core and its objectives; steps, logging, optimizer."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.features import encoder_fingerprint
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.encoders.text import TextEncoder
from jepa_lightning.metrics import CrossModalRecall
from jepa_lightning.models.vl_jepa import BatchForward, VLJEPAModel
from jepa_lightning.modules.checkpoints import (
    finite_or_raise,
    load_core_weights,
    restore_frozen_x_encoder,
    strip_frozen_x_encoder,
    under_cli,
)
from jepa_lightning.modules.optim import GroupedOptimizer, parameter_groups
from jepa_lightning.objectives import CaptionInfoNCE, Objective
from jepa_lightning.predictor import DEFAULT_PREDICTOR_LM

log = logging.getLogger(__name__)


class VLJEPA(GroupedOptimizer, LightningModule):
    """VL-JEPA: a frozen X-encoder, a trainable Y-encoder and a bidirectional predictor.

    The model core (:class:`~jepa_lightning.models.VLJEPAModel`) predicts the caption's
    embedding ``ŝ`` from the X-encoder's tokens (and an optional query) and embeds the caption
    as ``s``; the ``objectives`` (default: :class:`~jepa_lightning.objectives.CaptionInfoNCE`)
    turn a batch into weighted losses. For retrieval, an input embeds as ``ŝ`` with no query
    and a text as ``s``, both L2-normalised.

    Args:
        x_encoder: The X-encoder (frozen, normally).
        text_encoder: The Y-encoder; its tokenizer also tokenises queries.
        embed_dim: Width ``D`` of the shared embedding space.
        predictor_lm: Source of the predictor's transformer (hub name, folder, or config dict
            of a Llama-style LM).
        predictor_layers: Keep the LM's last this-many layers; default all.
        objectives: The objectives, each with its weight; default the caption InfoNCE.
        optimizer: Builds the optimizer from parameter groups (the LightningCLI
            ``OptimizerCallable``); default AdamW(lr=1e-3, weight_decay=0.05,
            betas=(0.9, 0.98)). Each group's learning rate is the optimizer's times its
            encoder's ``lr_multiplier``; 1-D parameters get no weight decay.
        lr_scheduler: Builds the scheduler (stepped every step); default linear warmup over
            ``warmup_steps`` then cosine decay to ``min_lr_ratio`` over the run.
        warmup_steps: Warmup steps of the default schedule.
        min_lr_ratio: Final learning rate of the default schedule, as a fraction of the peak.
        recall_top_k: The k of the validation recall@k.
        gradient_checkpointing: Recompute predictor and Y-encoder activations in backward.
        compile_predictor: ``torch.compile`` the predictor in place (its parameter names, and
            so checkpoints, are unchanged).
        on_nonfinite: What a non-finite loss does: ``"raise"`` stops the run naming the loss
            part and step; ``"skip"`` skips the step on every rank and logs
            ``train/skipped_steps``.
        save_frozen_encoder: Keep a frozen, pretrained X-encoder's weights in checkpoints. By
            default they are left out (they reload from their recorded source).
        init_weights: Start ``fit`` from the model-core weights of this checkpoint or export
            folder, and nothing else: a new optimizer, schedule and step count (stage 2 from
            stage 1). Loaded when ``fit`` sets up, so a run resumed with ``--ckpt_path``
            and ``load_from_checkpoint`` use the checkpoint's own weights.

    Raises:
        ValueError: If two objectives share a name or ``on_nonfinite`` is unknown.
    """

    def __init__(
        self,
        x_encoder: ModalityEncoder,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        predictor_lm: ModelSource = DEFAULT_PREDICTOR_LM,
        predictor_layers: int | None = None,
        objectives: list[Objective] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        recall_top_k: tuple[int, ...] = (1, 5, 10),
        gradient_checkpointing: bool = False,
        compile_predictor: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        save_frozen_encoder: bool = False,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        objectives = objectives if objectives is not None else [CaptionInfoNCE()]
        names = [objective.name for objective in objectives]
        if not objectives or len(set(names)) != len(names):
            raise ValueError(f"objectives need distinct names and at least one, got {names}")
        # Modules given by class_path are saved as their config under LightningCLI (so that
        # load_from_checkpoint rebuilds them); module objects never are.
        modules = ["x_encoder", "text_encoder", "objectives", "optimizer", "lr_scheduler"]
        self.save_hyperparameters(ignore=[] if under_cli() else modules)
        self.model = VLJEPAModel(
            x_encoder,
            text_encoder,
            embed_dim,
            predictor_lm,
            predictor_layers,
            gradient_checkpointing,
        )
        if compile_predictor:
            self.model.predictor.compile()
        for objective in objectives:
            objective.bind(self.model)
        self.objectives = nn.ModuleDict({o.name: o for o in objectives})
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.on_nonfinite = on_nonfinite
        self.save_frozen_encoder = save_frozen_encoder
        self.init_weights = init_weights
        self.skipped_steps = 0
        self.predict_skipped = 0
        self._skip_optimizer_step = False
        # Unreadable samples of the running pass per metric name ("data/skipped",
        # "val/skipped"), logged once at its end: a self.log per step costs Lightning a walk
        # over its result object (~1 ms a step on the CPU, 1% of a default step).
        self._skipped: Counter[str] = Counter()
        # Pair ids are caption ids: image→text ranks distinct captions (caption-level recall).
        self.val_recall = CrossModalRecall(top_k=recall_top_k, distinct_texts=True)
        self.test_recall = CrossModalRecall(top_k=recall_top_k, distinct_texts=True)

    def batch_collator(self) -> PairCollator:
        """The picklable collator for the data module: the encoders' codecs and fingerprint.

        Returns:
            A collator with the X-encoder's and the Y-encoder's codecs.
        """
        x_encoder = self.model.x_encoder
        fingerprint = encoder_fingerprint(x_encoder)
        return PairCollator(x_encoder.codec(), self.model.text_encoder.codec(), fingerprint)

    def compute_losses(self, step: BatchForward) -> dict[str, Tensor]:
        """Each objective's loss and their weighted sum.

        Args:
            step: The batch and its shared forward pieces.

        Returns:
            ``loss`` (the weighted total) and one entry per objective name.
        """
        losses = {objective.name: objective(step) for objective in self._objectives()}
        total = sum(o.weight * losses[o.name] for o in self._objectives())
        return {"loss": torch.as_tensor(total), **losses}

    def _objectives(self) -> list[Objective]:
        return [cast(Objective, objective) for objective in self.objectives.values()]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Computes and logs the losses, the objectives' values, learning rates and skips.

        Raises:
            FloatingPointError: If a loss part is not finite and ``on_nonfinite="raise"``.
        """
        losses = self.compute_losses(BatchForward(self.model, batch))
        size = len(batch)
        if not self._losses_finite(losses):
            # Lightning refuses a None loss under DDP, and DDP needs a backward through every
            # trainable parameter: a zero loss over them; on_before_optimizer_step then drops
            # the (zero) gradients so that the optimizer leaves every weight as it is.
            self._skip_optimizer_step = True
            trainable = [p.sum() for p in self.parameters() if p.requires_grad]
            return 0.0 * torch.stack(trainable).sum()
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self._skipped["data/skipped"] += batch.skipped
        if self._is_logging_step():
            # The rest only on the steps that reach the loggers: every self.log costs Lightning
            # a walk over its result object (~0.2 ms a key on the CPU).
            logged: dict[str, Any] = {
                f"train/loss_{k}": v for k, v in losses.items() if k != "loss"
            }
            for objective in self._objectives():
                logged.update({f"train/{k}": v for k, v in objective.logged_values().items()})
            groups = self.trainer.optimizers[0].param_groups
            logged.update({f"lr/{g['name']}": g["lr"] for g in groups})
            self.log_dict(logged, batch_size=size)
        return losses["loss"]

    def _is_logging_step(self) -> bool:
        """Whether this step's metrics reach the loggers (every ``log_every_n_steps``)."""
        every = int(self.trainer.log_every_n_steps)  # type: ignore[attr-defined]  # set at init
        return (self.global_step + 1) % max(every, 1) == 0

    def _losses_finite(self, losses: dict[str, Tensor]) -> bool:
        bad = [f"{name}={value.item()}" for name, value in losses.items() if not value.isfinite()]
        # Every rank must take the same decision, or DDP waits forever on a skipped backward.
        if self.trainer.strategy.reduce_boolean_decision(not bad, all=True):
            return True
        where = f"at global step {self.global_step} (rank {self.global_rank})"
        detail = ", ".join(bad) if bad else "on another rank"
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite loss {where}: {detail}; set model.init_args.on_nonfinite=skip to skip "
                "such steps"
            )
        log.warning("skipping step with non-finite loss %s: %s", where, detail)
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        return False

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drops a skipped step's gradients: the optimizer then changes no weight or moment."""
        if self._skip_optimizer_step:
            optimizer.zero_grad(set_to_none=True)
            self._skip_optimizer_step = False

    def on_train_epoch_end(self) -> None:
        """Logs ``data/skipped``: the epoch's unreadable training samples, over all ranks."""
        self._log_skipped("data/skipped")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Applies the objectives' post-step rules (the temperature clamp)."""
        for objective in self._objectives():
            objective.after_optimizer_step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses non-finite weights; leaves out a reloadable frozen X-encoder.

        Raises:
            FloatingPointError: If a weight is not finite (no checkpoint is written).
        """
        finite_or_raise(checkpoint["state_dict"], self.global_step)
        strip_frozen_x_encoder(
            checkpoint, self.model.x_encoder, "model.x_encoder.", keep=self.save_frozen_encoder
        )

    def setup(self, stage: str) -> None:
        """Loads ``init_weights`` into the model core before ``fit`` (and any resume)."""
        if stage == "fit" and self.init_weights is not None:
            load_core_weights(self.model, self.init_weights, "model.init_args.init_weights")
            rank_zero_info(f"model weights initialised from {self.init_weights}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores a left-out frozen X-encoder's weights from the model just built."""
        restore_frozen_x_encoder(checkpoint, self.model.x_encoder, "model.x_encoder.")

    def _log_skipped(self, name: str) -> None:
        """Logs the pass's count of unreadable samples under ``name``, summed over ranks."""
        skipped = float(self._skipped.pop(name, 0))
        self.log(name, skipped, on_epoch=True, reduce_fx="sum", sync_dist=True)

    @staticmethod
    def _valid_retrieval(step: BatchForward) -> tuple[Tensor, Tensor]:
        """The retrieval embeddings of the rows that count (an evaluation filler row dropped)."""
        predicted, target = step.retrieval
        valid = step.batch.valid
        return (predicted, target) if valid is None else (predicted[valid], target[valid])

    def _evaluate(self, batch: Batch, recall: CrossModalRecall, prefix: str) -> dict[str, Tensor]:
        step = BatchForward(self.model, batch)
        loss = self.compute_losses(step)["loss"]
        rows = batch.valid_rows()
        # A filler row only keeps the ranks in step: its loss weighs 0 in the epoch's mean.
        self.log(f"{prefix}/loss", loss, batch_size=len(rows), sync_dist=True)
        self._skipped[f"{prefix}/skipped"] += batch.skipped
        predicted, target = self._valid_retrieval(step)
        recall.update(predicted, target, rows.pair_ids)
        outputs = {"image_embeddings": predicted, "text_embeddings": target}
        if batch.query_ids is not None:  # ŝ given each row's query, for VQA
            query = F.normalize(step.predicted, dim=-1)
            outputs["query_embeddings"] = query if batch.valid is None else query[batch.valid]
        return outputs

    def _log_recall(self, recall: CrossModalRecall, prefix: str) -> None:
        scores = recall.compute()
        mean = scores.pop("mean")
        self.log_dict({f"{prefix}/{k}": v for k, v in scores.items()})
        self.log(f"{prefix}/recall_mean", mean, prog_bar=True)
        recall.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Accumulates validation embeddings for recall@k; logs the loss and the skip count.

        ``val/skipped`` is the number of unreadable samples of the pass, over all ranks.

        Returns:
            ``image_embeddings`` (``ŝ``, empty query) and ``text_embeddings`` (``s``), unit
            norm, of the rows that count (``batch.valid_rows()``): what the validation
            callbacks read, so that they run no forward of their own; for a batch with
            queries also ``query_embeddings`` (``ŝ`` given each row's query).
        """
        return self._evaluate(batch, self.val_recall, "val")

    def on_validation_epoch_end(self) -> None:
        """Logs input→text and text→input recall@k over the whole validation set."""
        self._log_recall(self.val_recall, "val")
        self._log_skipped("val/skipped")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Accumulates test embeddings for recall@k, logs the loss and ``test/skipped``."""
        return self._evaluate(batch, self.test_recall, "test")

    def on_test_epoch_end(self) -> None:
        """Logs input→text and text→input recall@k over the whole test set."""
        self._log_recall(self.test_recall, "test")
        self._log_skipped("test/skipped")

    def on_predict_epoch_start(self) -> None:
        """Starts the pass's count of unreadable samples."""
        self.predict_skipped = 0

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Returns the retrieval embeddings of a batch's rows that count.

        Returns:
            ``keys``, ``captions`` (None for a sample without one), ``image_embeddings``
            (``ŝ``, empty query) and ``text_embeddings`` (``s``; NaN rows for samples without
            a caption), float32 on the CPU.
        """
        self.predict_skipped += batch.skipped
        predicted, target = self._valid_retrieval(BatchForward(self.model, batch))
        rows = batch.valid_rows()
        captioned = torch.tensor(
            [bool(c) for c in rows.captions], dtype=torch.bool, device=target.device
        )
        target = target.masked_fill(~captioned[:, None], float("nan"))
        return {
            "keys": rows.keys,
            "captions": [caption or None for caption in rows.captions],
            "image_embeddings": predicted.float().cpu(),
            "text_embeddings": target.float().cpu(),
        }

    def on_predict_epoch_end(self) -> None:
        """Sums the pass's unreadable samples over ranks into ``predict_skipped``; logs it.

        ``predict/skipped`` goes to the loggers and to the console (rank 0).
        """
        count = torch.tensor(float(self.predict_skipped), device=self.device)
        self.predict_skipped = int(self.trainer.strategy.reduce(count, reduce_op="sum").item())
        for logger in self.loggers:
            logger.log_metrics({"predict/skipped": self.predict_skipped}, step=self.global_step)
        rank_zero_info(f"predict: {self.predict_skipped} unreadable samples skipped")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: per-encoder learning-rate multipliers, no decay on 1-D.

        Returns:
            See :func:`~jepa_lightning.modules.optim.parameter_groups`: ``x_encoder`` and
            ``text_encoder`` at their encoders' ``lr_multiplier``, ``head`` for the rest.
        """
        encoders = {"x_encoder": self.model.x_encoder, "text_encoder": self.model.text_encoder}
        multipliers = {f"model.{name}": e.lr_multiplier for name, e in encoders.items()}
        return parameter_groups(self, multipliers)
