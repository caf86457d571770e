"""The typed batch that the data pipeline yields and the models read."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from jepa_lightning.encoders.base import EncoderOutput

#: Tensors of a batch up to this size leave a loader worker by value, inside the pickle; a
#: larger one goes through shared memory, where each tensor costs the receiving process a
#: file-descriptor handshake with the worker: about a millisecond on the CPU, over half of the
#: default step's wait for data when every tensor went that way.
BY_VALUE_BYTES = 1 << 16

#: The fields that hold small per-row tensors (``x`` is large, or cached tokens).
_ROW_TENSORS = ("pair_ids", "caption_ids", "caption_mask", "query_ids", "query_mask", "valid")


@dataclass(frozen=True)
class _InPickle:
    """A small CPU tensor carried as a NumPy array, which pickles by value."""

    array: np.ndarray

    @staticmethod
    def wrap(value: Any) -> Any:
        """``value`` wrapped when it is a small CPU tensor that NumPy can hold, else as is."""
        if not isinstance(value, Tensor) or value.device.type != "cpu" or value.requires_grad:
            return value
        if value.nbytes > BY_VALUE_BYTES or value.dtype == torch.bfloat16:
            return value
        return _InPickle(value.numpy())


@dataclass
class Batch:
    """A collated batch of (X-modality, caption[, query]) samples.

    Lightning moves it to the model's device with :meth:`to`.

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
        valid: ``(B,)`` boolean mask of the rows that count, or None when every row does.
            An evaluation batch with no readable sample of its own holds one filler row (a
            copy of a readable sample, False here) so that every rank runs the same number
            of steps; losses, metrics and callbacks drop it (:meth:`valid_rows`).
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
    valid: Tensor | None = None

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        """The fields for pickling, with the small tensors by value (see ``BY_VALUE_BYTES``)."""
        state = dict(self.__dict__)
        for name in _ROW_TENSORS:
            state[name] = _InPickle.wrap(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores the fields, the small tensors from their arrays (no copy)."""
        for name, value in state.items():
            if isinstance(value, _InPickle):
                state[name] = torch.from_numpy(value.array)
        self.__dict__.update(state)

    def to(self, device: torch.device | str) -> Batch:
        """The batch with its tensors on ``device``: what Lightning calls to move a batch.

        Only the fields that hold tensors are walked; without this method Lightning would walk
        every sample's ``meta`` dict too, which cost more than the rest of its step overhead.

        Args:
            device: Where the model runs.

        Returns:
            A new batch; the per-sample lists are shared with this one.
        """
        device = torch.device(device)
        non_blocking = device.type not in ("cpu", "mps")  # Lightning's rule for the same call

        def move(value: Any) -> Any:
            return apply_to_collection(
                value, Tensor, lambda tensor: tensor.to(device, non_blocking=non_blocking)
            )

        tensors = ("x", "pair_ids", "caption_ids", "caption_mask", "query_ids", "query_mask")
        return replace(self, **{name: move(getattr(self, name)) for name in (*tensors, "valid")})

    def valid_rows(self) -> Batch:
        """The batch without its filler rows.

        Returns:
            ``self`` when every row counts, else a batch of the rows whose ``valid`` is True
            (every per-row field filtered, ``valid`` None).
        """
        if self.valid is None:
            return self
        mask = self.valid
        keep = mask.tolist()

        def rows(value: Any) -> Any:
            if isinstance(value, list) and value:  # per-row lists; an unset ``meta`` is []
                return [item for item, kept in zip(value, keep, strict=True) if kept]
            return apply_to_collection(value, Tensor, lambda tensor: tensor[mask])

        per_row = {f.name: rows(getattr(self, f.name)) for f in fields(self) if f.name != "valid"}
        return replace(self, **per_row, valid=None)

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
