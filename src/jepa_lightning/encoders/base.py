"""The modality encoder contract: the extension point for new modalities."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn


class EncoderOutput(NamedTuple):
    """Tokens of one modality.

    Attributes:
        tokens: ``(B, N, D)`` token features.
        mask: ``(B, N)`` boolean, ``True`` where a token is real (not padding).
    """

    tokens: Tensor
    mask: Tensor


class SampleCodec(Protocol):
    """Turns one modality's raw sample bytes into a batch, in data loader workers.

    Codecs are small and picklable (no model weights): the data pipeline ships
    them to every worker.
    """

    @property
    def extensions(self) -> tuple[str, ...]:
        """WebDataset file extensions to read, in order of preference (e.g. ``("jpg", "png")``)."""

    def decode(self, data: bytes) -> Any:
        """Decodes one sample's bytes; raises ``ValueError`` (or the decoder's error) if corrupt."""

    def collate(self, items: Sequence[Any]) -> Any:
        """Stacks decoded items into the batch input of ``ModalityEncoder.encode``."""


class ModalityEncoder(nn.Module, ABC):
    """Turns a batch of one modality into tokens ``(B, N, D)`` plus a padding mask.

    The contract a modality implements:

    * :meth:`encode`: a batch (as its :meth:`codec` collates it) to an :class:`EncoderOutput`;
      padded positions are ``False`` in the mask and never reach the predictor's attention.
    * :attr:`output_dim`: the token width ``D``.
    * :attr:`num_tokens`: tokens per sample, or None for a variable-length modality (then
      the predictor uses rotary positions only, no learned position table).
    * :attr:`grid`: the token grid (e.g. ``(h, w)`` or ``(t, h, w)``, row-major) when the
      tokens form one; the masked objectives need it. None otherwise.
    * :meth:`describe`: a JSON-able description (class, source, geometry, transforms) that
      checkpoints, exports and the feature-cache fingerprint record; extend it with every
      setting that changes what the encoder computes from a sample.

    A frozen encoder has ``requires_grad=False`` on every parameter, stays in eval mode
    through ``train()``, runs under ``torch.no_grad()`` and is left out of the optimizer. The
    base class applies this once a subclass's ``__init__`` returns (and puts a trainable
    encoder in train mode, whatever mode its pretrained weights loaded in): subclasses do
    nothing.

    Args:
        frozen: Freeze every parameter of the encoder.
        lr_multiplier: Scale of the base learning rate for this encoder's
            parameters (ignored when frozen).

    Raises:
        ValueError: If ``lr_multiplier`` is not positive.
    """

    def __init__(self, frozen: bool = False, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        if lr_multiplier <= 0:
            raise ValueError(f"lr_multiplier must be positive, got {lr_multiplier}")
        self.frozen = frozen
        self.lr_multiplier = lr_multiplier

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wraps each subclass's ``__init__`` so that the frozen semantics follow it."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def init_then_freeze(self: ModalityEncoder, *args: Any, **init_kwargs: Any) -> None:
            init(self, *args, **init_kwargs)
            if type(self) is cls:  # the most derived __init__ has built every module
                self._apply_frozen()

        cls.__init__ = init_then_freeze  # type: ignore[method-assign]

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Width ``D`` of the tokens this encoder returns."""

    @property
    def num_tokens(self) -> int | None:
        """Tokens per sample; None when the length varies (the default)."""
        return None

    @property
    def grid(self) -> tuple[int, ...] | None:
        """Shape of the token grid (row-major), or None when the tokens form no grid."""
        return None

    @abstractmethod
    def codec(self) -> SampleCodec:
        """The picklable codec that decodes and batches this modality's samples."""

    @abstractmethod
    def encode(self, inputs: Any) -> EncoderOutput:
        """Encodes a batch of this modality.

        Args:
            inputs: The batch, in the form the subclass documents.

        Returns:
            The tokens and their padding mask.
        """

    def describe(self) -> dict[str, Any]:
        """What this encoder is and computes, JSON-able; subclasses add their settings.

        Returns:
            ``class`` (dotted path), ``output_dim``, ``num_tokens`` and ``grid``.
        """
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "output_dim": self.output_dim,
            "num_tokens": self.num_tokens,
            "grid": None if self.grid is None else list(self.grid),
        }

    def thumbnails(self, inputs: Any, size: int) -> Tensor | None:
        """Pictures of a batch of inputs, for TensorBoard (retrieval grid, projector sprites).

        Args:
            inputs: The batch, as for :meth:`encode`.
            size: Side of each picture in pixels.

        Returns:
            ``(B, 3, size, size)`` ``uint8`` pictures on the CPU, or None (the default) for a
            modality without pictures: the callbacks then leave them out.
        """
        return None

    def forward(self, inputs: Any) -> EncoderOutput:
        """Encodes ``inputs``, without building a graph when the encoder is frozen.

        Args:
            inputs: The batch, as for :meth:`encode`.

        Returns:
            The tokens and their padding mask.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encode(inputs)

    def _apply_frozen(self) -> None:
        # from_pretrained returns eval mode, which Lightning keeps: a trainable encoder
        # starts in train mode (dropout on), a frozen one frozen and in eval mode.
        if self.frozen:
            self.requires_grad_(False)
        self.train(not self.frozen)

    def train(self, mode: bool = True) -> ModalityEncoder:
        """Sets train mode, except that a frozen encoder always stays in eval mode.

        Args:
            mode: The requested mode.

        Returns:
            This module.
        """
        return super().train(mode and not self.frozen)
