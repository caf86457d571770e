"""Training the Y-decoder on captions while a trained VL-JEPA stays frozen."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.features import encoder_fingerprint
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.inference import PretrainedVLJEPA, load_model
from jepa_lightning.metrics.captions import CaptionQuality
from jepa_lightning.models.vl_jepa import BatchForward
from jepa_lightning.models.y_decoder import DEFAULT_DECODER_LM, YDecoder
from jepa_lightning.modules.checkpoints import finite_or_raise
from jepa_lightning.modules.optim import GroupedOptimizer, parameter_groups

Condition = Literal["predicted", "target", "both"]
CONDITIONS: tuple[str, ...] = ("predicted", "target", "both")
FROZEN_PREFIX = "vl_jepa."


class YDecoderModule(GroupedOptimizer, LightningModule):
    """Trains a :class:`~jepa_lightning.models.YDecoder` on the embeddings of a frozen VL-JEPA.

    Each training batch (images and captions, from the same data modules as VL-JEPA) is
    embedded by the frozen VL-JEPA (``ŝ``: the predictor's embedding of the image with no
    query; ``s``: the Y-encoder's embedding of the caption, both unit norm) and the decoder
    learns to write the caption from ``condition``'s embedding with teacher forcing.
    Validation generates captions (greedy, or ``num_beams``) from ``ŝ`` and from ``s`` and logs
    ``val/{predicted,target}/{exact_match,rougeL}``.

    The frozen VL-JEPA is left out of checkpoints (it reloads from ``vl_jepa``).

    Args:
        vl_jepa: The trained VL-JEPA: a ``jepa-lightning fit`` checkpoint, an export folder or
            a hub id (see :func:`~jepa_lightning.inference.load_model`).
        lm: The decoder's causal LM (see :class:`~jepa_lightning.models.YDecoder`).
        tokenizer: The decoder's tokenizer; default as :class:`~jepa_lightning.models.YDecoder`.
        prefix_length: Prefix embeddings per embedding.
        max_length: Longest caption in tokens.
        condition: Train on ``"predicted"`` (``ŝ``, what inference has), ``"target"``
            (``s``) or ``"both"`` (each caption twice, once from each).
        optimizer: Builds the optimizer (default AdamW, lr 1e-3, weight decay 0.05).
        lr_scheduler: Builds the scheduler (default warmup + cosine).
        warmup_steps: Warmup steps of the default schedule.
        min_lr_ratio: Final learning rate of the default schedule, as a fraction of the peak.
        num_beams: Beams of validation's generation (1: greedy).

    Raises:
        ValueError: If ``condition`` is unknown.
    """

    def __init__(
        self,
        vl_jepa: str,
        lm: ModelSource = DEFAULT_DECODER_LM,
        tokenizer: str | None = None,
        prefix_length: int = 4,
        max_length: int = 32,
        condition: Condition = "predicted",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        num_beams: int = 1,
    ) -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.vl_jepa: PretrainedVLJEPA = load_model(vl_jepa).requires_grad_(False)
        self.decoder = YDecoder(
            lm, tokenizer, self.vl_jepa.model.embed_dim, prefix_length, max_length
        )
        self.condition = condition
        self.num_beams = num_beams
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.val_quality = nn.ModuleDict(
            {"predicted": CaptionQuality(), "target": CaptionQuality()}
        )

    def train(self, mode: bool = True) -> YDecoderModule:
        """Sets the decoder's mode; the frozen VL-JEPA stays in eval mode.

        Args:
            mode: Training mode.

        Returns:
            The module.
        """
        super().train(mode)
        self.vl_jepa.eval()
        return self

    def batch_collator(self) -> PairCollator:
        """The data module's collator: the frozen VL-JEPA's codecs, as for its own training.

        Returns:
            A collator with the X-encoder's and the Y-encoder's codecs.
        """
        model = self.vl_jepa.model
        fingerprint = encoder_fingerprint(model.x_encoder)
        return PairCollator(model.x_encoder.codec(), model.text_encoder.codec(), fingerprint)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The decoder's parameters (the frozen VL-JEPA has none to train)."""
        return parameter_groups(self, {})

    @torch.no_grad()
    def embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``ŝ`` (no query) and ``s`` of the rows that count, unit norm, from the frozen VL-JEPA.

        Args:
            batch: Images (or cached tokens) and captions.

        Returns:
            ``(predicted, target)``, each ``(B, embed_dim)``.
        """
        rows = batch.valid_rows()
        return BatchForward(self.vl_jepa.model, rows).retrieval

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """The teacher-forced caption loss from ``condition``'s embeddings."""
        predicted, target = self.embeddings(batch)
        captions = batch.valid_rows().captions
        if self.condition == "predicted":
            embeddings = predicted
        elif self.condition == "target":
            embeddings = target
        else:
            embeddings, captions = torch.cat([predicted, target]), captions * 2
        loss = self.decoder(embeddings, captions)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(embeddings))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Generates captions from ``ŝ`` and from ``s`` and scores them against the truth."""
        predicted, target = self.embeddings(batch)
        captions = batch.valid_rows().captions
        for name, embeddings in (("predicted", predicted), ("target", target)):
            generated = self.decoder.generate(embeddings, num_beams=self.num_beams)
            cast(CaptionQuality, self.val_quality[name]).update(generated, captions)

    def on_validation_epoch_end(self) -> None:
        """Logs the exact-match rate and ROUGE-L of each condition over the validation set."""
        for name, module in self.val_quality.items():
            metric = cast(CaptionQuality, module)
            scores = metric.compute()
            self.log_dict({f"val/{name}/{key}": value for key, value in scores.items()})
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses non-finite weights; leaves out the frozen VL-JEPA (it reloads from its source).

        Raises:
            FloatingPointError: If a weight is not finite (no checkpoint is written).
        """
        state = checkpoint["state_dict"]
        for name in [name for name in state if name.startswith(FROZEN_PREFIX)]:
            del state[name]
        finite_or_raise(state, self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Puts back the frozen VL-JEPA's weights, from the model just built from its source."""
        frozen = {
            f"{FROZEN_PREFIX}{name}": value for name, value in self.vl_jepa.state_dict().items()
        }
        checkpoint["state_dict"].update(frozen)

    def standalone(self) -> PretrainedVLJEPA:
        """The frozen VL-JEPA with this decoder, for inference and ``save_pretrained``.

        Returns:
            A :class:`~jepa_lightning.inference.PretrainedVLJEPA` sharing these weights.
        """
        source = self.vl_jepa
        return PretrainedVLJEPA(
            source.model, source.temperature, source.batch_size, decoder=self.decoder
        )


def export_decoder_checkpoint(checkpoint: str, output: str) -> str:
    """Exports a Y-decoder checkpoint with its VL-JEPA as one standalone model folder.

    The folder is VL-JEPA's export (:mod:`jepa_lightning.export`) plus ``decoder/``;
    :meth:`PretrainedVLJEPA.from_pretrained` loads both, and ``decode`` and ``caption`` work.

    Args:
        checkpoint: A ``.ckpt`` written by ``jepa-lightning fit`` with a
            :class:`YDecoderModule`.
        output: The folder to write.

    Returns:
        The folder.
    """
    module = YDecoderModule.load_from_checkpoint(checkpoint, map_location="cpu")
    module.standalone().save_pretrained(output)
    return output
