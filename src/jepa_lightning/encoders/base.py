"""The modality encoder base class: the extension point for new modalities."""

from __future__ import annotations

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

    Subclasses implement :meth:`encode` and :attr:`output_dim`. A frozen encoder
    has ``requires_grad=False`` on every parameter, stays in eval mode through
    ``train()``, runs under ``torch.no_grad()`` and is left out of the optimizer.

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

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Width ``D`` of the tokens this encoder returns."""

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

    def forward(self, inputs: Any) -> EncoderOutput:
        """Encodes ``inputs``, without building a graph when the encoder is frozen.

        Args:
            inputs: The batch, as for :meth:`encode`.

        Returns:
            The tokens and their padding mask.
        """
        if self.frozen:
            with torch.no_grad():
                return self.encode(inputs)
        return self.encode(inputs)

    def freeze_parameters(self) -> None:
        """Applies the frozen semantics; subclasses call it once their modules exist."""
        if self.frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> ModalityEncoder:
        """Sets train mode, except that a frozen encoder always stays in eval mode.

        Args:
            mode: The requested mode.

        Returns:
            This module.
        """
        return super().train(mode and not self.frozen)
