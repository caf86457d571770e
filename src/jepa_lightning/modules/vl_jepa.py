"""VL-JEPA: predict the caption's embedding from frozen visual tokens, with InfoNCE."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from jepa_lightning.data.collate import PairCollator, batch_size_of
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import ModelSource, describe_source
from jepa_lightning.encoders.text import TextEncoder, masked_mean
from jepa_lightning.losses import InfoNCELoss, MaskedTokenInfoNCELoss
from jepa_lightning.masking import MultiBlockMaskGenerator
from jepa_lightning.metrics import CrossModalRecall
from jepa_lightning.predictor import DEFAULT_PREDICTOR_LM, Predictor

log = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to ``min_lr_ratio``.

    Args:
        step: The optimizer step.
        warmup_steps: Steps of linear warmup from 0.
        total_steps: Steps of the whole schedule.
        min_lr_ratio: Final factor.

    Returns:
        The factor to multiply each group's base learning rate by.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class VLJEPA(LightningModule):
    """VL-JEPA: a frozen X-encoder, a trainable Y-encoder and a bidirectional predictor.

    The predictor reads the X-encoder's visual tokens (and an optional query)
    and predicts the caption's embedding ``ŝ``; the Y-encoder embeds the
    caption as ``s``. Two objectives, weighted:

    * ``caption``: symmetric InfoNCE between ``ŝ`` and ``s`` with a learnable
      temperature and negatives gathered from all ranks.
    * ``masked``: multi-block masks hide visual tokens; from the visible ones
      and the caption's token embeddings, the predictor predicts the frozen
      encoder's layer-normed tokens at the hidden positions (token-level InfoNCE).

    For retrieval, an image embeds as ``ŝ`` with no query and a text as ``s``,
    both L2-normalised.

    Args:
        vision_encoder: The X-encoder (frozen, normally); it must report
            ``grid_size`` (its token grid) for the masked objective.
        text_encoder: The Y-encoder; its tokenizer also tokenises queries.
        embed_dim: Width ``D`` of the shared embedding space.
        predictor_lm: Source of the predictor's transformer (hub name, folder,
            or config dict of a Llama-style LM).
        predictor_layers: Keep the LM's last this-many layers; default all.
        caption_weight: Weight of the caption InfoNCE objective.
        masked_weight: Weight of the masked visual-token objective.
        masking: Keyword arguments of the multi-block mask generator.
        init_temperature: Initial InfoNCE temperature (``logit_scale = log(1/T)``).
        masked_temperature: Fixed temperature of the masked-token InfoNCE.
        lr: Peak learning rate (scaled per encoder by its ``lr_multiplier``).
        weight_decay: AdamW weight decay (none on biases, norms and temperature).
        betas: AdamW betas.
        warmup_steps: Linear warmup steps.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        recall_top_k: The k of the validation recall@k.
        gradient_checkpointing: Recompute predictor and Y-encoder activations
            in backward (non-reentrant).
        compile_predictor: ``torch.compile`` the predictor in place (its
            parameter names, and so checkpoints, are unchanged).
        on_nonfinite: What a non-finite loss does: ``"raise"`` stops the run
            naming the loss part and step; ``"skip"`` skips the step on every
            rank and logs ``train/skipped_steps``.
        save_frozen_encoder: Keep a frozen, pretrained X-encoder's weights in
            checkpoints. By default they are left out (they reload from their
            source, which the checkpoint records); random-init encoders are
            always kept.

    Raises:
        ValueError: If both objective weights are zero or one is negative, or
            ``on_nonfinite`` is unknown.
    """

    def __init__(
        self,
        vision_encoder: ModalityEncoder,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        predictor_lm: ModelSource = DEFAULT_PREDICTOR_LM,
        predictor_layers: int | None = None,
        caption_weight: float = 1.0,
        masked_weight: float = 0.0,
        masking: dict[str, Any] | None = None,
        init_temperature: float = 0.07,
        masked_temperature: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        recall_top_k: tuple[int, ...] = (1, 5, 10),
        gradient_checkpointing: bool = False,
        compile_predictor: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        save_frozen_encoder: bool = False,
    ) -> None:
        super().__init__()
        if caption_weight < 0 or masked_weight < 0 or caption_weight + masked_weight == 0:
            raise ValueError(
                "caption_weight and masked_weight must be >= 0 and not both 0, "
                f"got caption_weight={caption_weight}, masked_weight={masked_weight}"
            )
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        # Under LightningCLI the encoders' class_path configs are saved (so that
        # load_from_checkpoint rebuilds them); module objects never are.
        self.save_hyperparameters(ignore=[] if _under_cli() else ["vision_encoder", "text_encoder"])
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.caption_weight = caption_weight
        self.masked_weight = masked_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.on_nonfinite = on_nonfinite
        self.save_frozen_encoder = save_frozen_encoder
        num_visual_tokens = self._num_visual_tokens()
        self.predictor = Predictor(
            visual_dim=vision_encoder.output_dim,
            query_dim=text_encoder.output_dim,
            output_dim=embed_dim,
            num_visual_tokens=num_visual_tokens,
            lm=predictor_lm,
            num_layers=predictor_layers,
            gradient_checkpointing=gradient_checkpointing,
        )
        if gradient_checkpointing and not text_encoder.frozen:
            text_encoder.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if compile_predictor:
            self.predictor.compile()
        self.text_projection = nn.Linear(text_encoder.output_dim, embed_dim)
        self.caption_loss = InfoNCELoss(init_temperature=init_temperature)
        self.masked_loss = MaskedTokenInfoNCELoss(temperature=masked_temperature)
        self.mask_generator: MultiBlockMaskGenerator | None = None
        self.masked_head: nn.Linear | None = None
        if masked_weight > 0:
            grid = getattr(vision_encoder, "grid_size", None)
            if grid is None:
                raise ValueError("masked_weight > 0 needs a vision_encoder with a grid_size")
            self.mask_generator = MultiBlockMaskGenerator(grid, **(masking or {}))
            self.masked_head = nn.Linear(self.predictor.width, vision_encoder.output_dim)
        self.skipped_steps = 0
        self._skip_optimizer_step = False
        self.val_recall = CrossModalRecall(top_k=recall_top_k)
        self.test_recall = CrossModalRecall(top_k=recall_top_k)

    def _num_visual_tokens(self) -> int:
        num_tokens = getattr(self.vision_encoder, "num_tokens", None)
        if not isinstance(num_tokens, int):
            raise ValueError(
                f"{type(self.vision_encoder).__name__} must report `num_tokens` "
                "(its number of token positions) to size the predictor's positions"
            )
        return num_tokens

    def batch_collator(self) -> PairCollator:
        """The picklable collator that the DataModule runs in its workers.

        Returns:
            A collator with the X-encoder's and the Y-encoder's codecs.
        """
        return PairCollator(self.vision_encoder.codec(), self.text_encoder.codec())

    def embed_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeds texts as ``s``: masked-mean Y-encoder tokens, projected, normalised.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` mask of real tokens.

        Returns:
            ``(B, embed_dim)`` unit-norm embeddings.
        """
        return F.normalize(self._text_targets(input_ids, attention_mask), dim=-1)

    def embed_inputs(
        self, inputs: Any, query_ids: Tensor | None = None, query_mask: Tensor | None = None
    ) -> Tensor:
        """Embeds X-modality inputs as ``ŝ`` (with the empty query unless one is given).

        Args:
            inputs: The X-encoder's batch (images).
            query_ids: ``(B, Nq)`` query token ids, or None.
            query_mask: ``(B, Nq)`` mask of real query tokens.

        Returns:
            ``(B, embed_dim)`` unit-norm embeddings.
        """
        visual = self.vision_encoder(inputs).tokens
        return F.normalize(self._predict(visual, query_ids, query_mask), dim=-1)

    def embed_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Retrieval embeddings of a collated batch: ``ŝ`` (empty query) and ``s``.

        Args:
            batch: A collated batch with ``inputs`` or cached ``features``, and captions.

        Returns:
            ``(B, embed_dim)`` unit-norm image and caption embeddings.
        """
        return self._retrieval_embeddings(batch, self.visual_tokens(batch))

    def _retrieval_embeddings(
        self,
        batch: dict[str, Any],
        visual: Tensor,
        caption_pair: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``ŝ`` (empty query) and ``s``, unit norm, reusing the caption objective's pair.

        The caption loss's target is ``s``; its prediction is ``ŝ`` unless the batch has a
        query (retrieval always uses the empty one).
        """
        predicted, target = caption_pair if caption_pair is not None else (None, None)
        if predicted is None or "query_ids" in batch:
            predicted = self._predict(visual, None, None)
        if target is None:
            target = self._text_targets(batch["caption_ids"], batch["caption_mask"])
        return F.normalize(predicted, dim=-1), F.normalize(target, dim=-1)

    def visual_tokens(self, batch: dict[str, Any]) -> Tensor:
        """The X-encoder's tokens of a batch: cached ``features`` if present, else encoded.

        Args:
            batch: A collated batch with ``inputs`` or precomputed ``features``.

        Returns:
            ``(B, N, Dx)`` visual tokens in the compute dtype.
        """
        if "features" in batch:
            features: Tensor = batch["features"]
            return features.to(self.predictor.visual_proj.weight.dtype)
        return self.vision_encoder(batch["inputs"]).tokens

    def _text_targets(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        tokens, mask = self.text_encoder({"input_ids": input_ids, "attention_mask": attention_mask})
        return self.text_projection(masked_mean(tokens, mask))

    def _predict(
        self, visual: Tensor, query_ids: Tensor | None, query_mask: Tensor | None
    ) -> Tensor:
        query_embeds = None if query_ids is None else self.text_encoder.embed_tokens(query_ids)
        return self.predictor(visual, query_embeds, query_mask)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Computes each enabled objective and their weighted sum.

        Args:
            batch: A collated batch (see :class:`~jepa_lightning.data.collate.PairCollator`).

        Returns:
            ``loss`` (the weighted total) and ``caption``/``masked`` parts.
        """
        return self._losses(batch, self.visual_tokens(batch))[0]

    def _losses(
        self, batch: dict[str, Any], visual: Tensor
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]:
        """The losses, and the caption objective's (prediction, target) pair if it is on."""
        losses: dict[str, Tensor] = {}
        caption_pair = None
        if self.caption_weight > 0:
            caption_pair = (
                self._predict(visual, batch.get("query_ids"), batch.get("query_mask")),
                self._text_targets(batch["caption_ids"], batch["caption_mask"]),
            )
            losses["caption"] = self.caption_loss(*caption_pair)
        if self.masked_weight > 0:
            losses["masked"] = self._masked_token_loss(visual, batch)
        weights = {"caption": self.caption_weight, "masked": self.masked_weight}
        losses["loss"] = sum(
            (weights[name] * value for name, value in losses.items()),
            start=torch.zeros((), device=visual.device),
        )
        return losses, caption_pair

    def _masked_token_loss(self, visual: Tensor, batch: dict[str, Any]) -> Tensor:
        assert self.mask_generator is not None and self.masked_head is not None
        masks = self.mask_generator(visual.shape[0])
        context = masks.context.to(visual.device)
        hidden_positions = masks.targets.to(visual.device)
        visible = _take_tokens(visual, context)
        # I-JEPA targets: the frozen tokens, layer-normed without affine parameters.
        targets = F.layer_norm(_take_tokens(visual, hidden_positions), visual.shape[-1:])
        caption_embeds = self.text_encoder.embed_tokens(batch["caption_ids"])
        hidden, _ = self.predictor.encode(
            visible,
            visual_positions=context,
            query_embeds=caption_embeds,
            query_mask=batch["caption_mask"],
            mask_positions=hidden_positions,
        )
        start = context.shape[1]
        predictions = self.masked_head(hidden[:, start : start + hidden_positions.shape[1]])
        return self.masked_loss(predictions, targets)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Computes and logs the losses, the temperature, learning rates and skipped samples.

        Raises:
            FloatingPointError: If a loss part is not finite and ``on_nonfinite="raise"``.
        """
        losses = self.compute_losses(batch)
        size = batch_size_of(batch)
        if not self._losses_finite(losses):
            # Lightning refuses a None loss under DDP, and DDP needs a backward through every
            # trainable parameter: a zero loss over them; on_before_optimizer_step then drops
            # the (zero) gradients so that the optimizer leaves every weight as it is.
            self._skip_optimizer_step = True
            trainable = [p.sum() for p in self.parameters() if p.requires_grad]
            return 0.0 * torch.stack(trainable).sum()
        self.log_dict(
            {f"train/loss_{k}" if k != "loss" else "train/loss": v for k, v in losses.items()},
            prog_bar=False,
            batch_size=size,
        )
        self.log("train/temperature", self.caption_loss.temperature, batch_size=size)
        groups = self.trainer.optimizers[0].param_groups
        self.log_dict({f"lr/{g['name']}": g["lr"] for g in groups}, batch_size=size)
        if "skipped" in batch:
            self.log(
                "data/skipped",
                float(batch["skipped"]),
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                sync_dist=True,
                batch_size=size,
            )
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=size)
        return losses["loss"]

    def _losses_finite(self, losses: dict[str, Tensor]) -> bool:
        bad = [f"{name}={value.item()}" for name, value in losses.items() if not value.isfinite()]
        # Every rank must take the same decision, or DDP waits forever on a skipped backward.
        all_finite = self.trainer.strategy.reduce_boolean_decision(not bad, all=True)
        if all_finite:
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
        """Drops a skipped step's gradients: AdamW then changes no weight and no moment."""
        if self._skip_optimizer_step:
            optimizer.zero_grad(set_to_none=True)
            self._skip_optimizer_step = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses non-finite weights and leaves out a reloadable frozen X-encoder.

        Raises:
            FloatingPointError: If a weight is not finite (no checkpoint is written).
        """
        state = checkpoint["state_dict"]
        bad = [
            name
            for name, value in state.items()
            if value.is_floating_point() and not value.isfinite().all()
        ]
        if bad:
            raise FloatingPointError(
                f"not writing a checkpoint at global step {self.global_step}: non-finite "
                f"weights in {bad[:5]}"
            )
        source = self.vision_encoder_source
        checkpoint["vision_encoder_source"] = (
            type(self.vision_encoder).__qualname__ if source is None else describe_source(source)
        )
        if self._frozen_encoder_reloadable() and not self.save_frozen_encoder:
            for name in [n for n in state if n.startswith("vision_encoder.")]:
                del state[name]
            checkpoint["vision_encoder_excluded"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores a left-out frozen X-encoder's weights from the model just built."""
        if checkpoint.get("vision_encoder_excluded"):
            own = self.vision_encoder.state_dict(prefix="vision_encoder.")
            checkpoint["state_dict"].update(own)

    @property
    def vision_encoder_source(self) -> ModelSource | None:
        """Where the X-encoder's weights come from (None for a custom encoder)."""
        return getattr(self.vision_encoder, "source", None)

    def _frozen_encoder_reloadable(self) -> bool:
        return self.vision_encoder.frozen and isinstance(self.vision_encoder_source, str)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Clamps the learnable temperature's parameter after each step (as CLIP does)."""
        self.caption_loss.clamp_logit_scale_()

    def _evaluate(
        self, batch: dict[str, Any], recall: CrossModalRecall, prefix: str
    ) -> dict[str, Tensor]:
        visual = self.visual_tokens(batch)  # once: the loss and the embeddings share it
        losses, caption_pair = self._losses(batch, visual)
        self.log(f"{prefix}/loss", losses["loss"], batch_size=batch_size_of(batch), sync_dist=True)
        images, texts = self._retrieval_embeddings(batch, visual, caption_pair)
        recall.update(images, texts, batch["pair_ids"])
        return {"image_embeddings": images, "text_embeddings": texts}

    def _log_recall(self, recall: CrossModalRecall, prefix: str) -> None:
        scores = recall.compute()
        mean = scores.pop("mean")
        self.log_dict({f"{prefix}/{k}": v for k, v in scores.items()})
        self.log(f"{prefix}/recall_mean", mean, prog_bar=True)
        recall.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Accumulates validation embeddings for recall@k and logs the loss.

        Returns:
            ``image_embeddings`` (``ŝ``, empty query) and ``text_embeddings`` (``s``), unit
            norm: what the validation callbacks read, so that they run no forward of their own.
        """
        return self._evaluate(batch, self.val_recall, "val")

    def on_validation_epoch_end(self) -> None:
        """Logs image→text and text→image recall@k over the whole validation set."""
        self._log_recall(self.val_recall, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Accumulates test embeddings for recall@k and logs the loss; returns them."""
        return self._evaluate(batch, self.test_recall, "test")

    def on_test_epoch_end(self) -> None:
        """Logs image→text and text→image recall@k over the whole test set."""
        self._log_recall(self.test_recall, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Returns the retrieval embeddings of a batch.

        Returns:
            ``keys``, ``captions``, ``image_embeddings`` (``ŝ``, empty query) and
            ``text_embeddings`` (``s``), on the CPU.
        """
        images, texts = self.embed_batch(batch)
        return {
            "keys": batch["keys"],
            "captions": batch["captions"],
            "image_embeddings": images.float().cpu(),
            "text_embeddings": texts.float().cpu(),
        }

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: per-encoder learning-rate multipliers, no decay on 1-D.

        Biases, norm weights and the temperature (every parameter with fewer
        than 2 dimensions) get no weight decay. Frozen parameters are left out.

        Returns:
            Groups with ``params``, ``name``, ``lr_multiplier`` and, for the
            no-decay ones, ``weight_decay=0``.
        """
        multipliers = {
            "vision_encoder": self.vision_encoder.lr_multiplier,
            "text_encoder": self.text_encoder.lr_multiplier,
        }
        grouped: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            owner = name.split(".", 1)[0]
            owner = owner if owner in multipliers else "head"
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
        self, total_steps: int
    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over :meth:`parameter_groups` and its warmup + cosine schedule per step.

        Args:
            total_steps: Optimizer steps of the whole run (the schedule's length).

        Returns:
            The optimizer and its learning-rate scheduler.
        """
        groups = self.parameter_groups()
        for group in groups:
            group["lr"] = self.lr * group["lr_multiplier"]
        optimizer = torch.optim.AdamW(
            groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas
        )
        schedule = partial(
            warmup_cosine,
            warmup_steps=self.warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=self.min_lr_ratio,
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """:meth:`build_optimizer` for the trainer's run, the scheduler stepped per step.

        Raises:
            ValueError: If the run has no finite length (set ``trainer.max_steps``).
        """
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(
                "the learning-rate schedule needs a finite run: set trainer.max_steps "
                "(streaming data has no epoch length)"
            )
        optimizer, scheduler = self.build_optimizer(int(total_steps))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _under_cli() -> bool:
    """Whether LightningCLI is instantiating this module with its config as hparams."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # older Lightning: encoders cannot be saved as config
        return False
    return _given_hyperparameters.get() is not None


def _take_tokens(tokens: Tensor, indices: Tensor) -> Tensor:
    """Gathers ``tokens[b, indices[b]]`` for each row ``b``."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
