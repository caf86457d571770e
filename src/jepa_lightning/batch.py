"""The typed batch that the data pipeline yields and the models read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from jepa_lightning.encoders.base import EncoderOutput


@dataclass
class Batch:
    """A collated batch of (X-modality, caption[, query]) samples.

    Lightning moves every tensor in it to the model's device (dataclasses are collections to
    ``apply_to_collection``).

    Attributes:
        x: The X-encoder's input as its codec collated it (e.g. ``(B, 3, H, W)`` images), or
            the cached tokens of a feature cache as an :class:`EncoderOutput` (tokens and
            padding mask), which the model uses instead of running its X-encoder.
        pair_ids: ``(B,)`` stable caption ids: rows with equal ids are positives of each other.
        keys: The samples' ``__key__``.
        captions: The caption texts (``""`` for a sample without one, which only a
            collator with ``captions_required=False`` keeps: prediction, search).
        caption_ids: ``(B, L)`` caption token ids (absent when the collator has no tokenizer).
        caption_mask: ``(B, L)`` boolean mask of real caption tokens.
        query_ids: ``(B, Nq)`` query token ids when any sample has a query.
        query_mask: ``(B, Nq)`` boolean mask of real query tokens (all False on rows without).
        meta: Each sample's ``json`` dict (``{}`` without one).
        skipped: Unreadable samples skipped since the worker's previous batch.
    """

    x: Any
    pair_ids: Tensor
    keys: list[str]
    captions: list[str]
    caption_ids: Tensor | None = None
    caption_mask: Tensor | None = None
    query_ids: Tensor | None = None
    query_mask: Tensor | None = None
    meta: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.keys)

    @property
    def cached(self) -> bool:
        """Whether ``x`` holds cached X-encoder tokens rather than raw inputs."""
        return isinstance(self.x, EncoderOutput)

    def caption_tokens(self) -> tuple[Tensor, Tensor]:
        """The caption token ids and mask.

        Returns:
            ``caption_ids`` and ``caption_mask``.

        Raises:
            ValueError: If the batch was collated without a tokenizer.
        """
        if self.caption_ids is None or self.caption_mask is None:
            raise ValueError("this batch has no caption tokens (collated without a tokenizer)")
        return self.caption_ids, self.caption_mask
