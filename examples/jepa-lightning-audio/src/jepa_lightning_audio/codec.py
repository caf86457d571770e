"""Decoding ``wav``/``flac`` samples (with ``soundfile``) and batching clips of any length."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from typing import NamedTuple

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch import Tensor

AUDIO_EXTENSIONS: tuple[str, ...] = ("flac", "wav")
"""Audio formats read, as WebDataset fields (file extensions without the dot)."""


class Waveforms(NamedTuple):
    """A batch of mono clips, zero-padded to the longest.

    A NamedTuple, so that Lightning moves both tensors to the device.

    Attributes:
        samples: ``(B, T)`` float32 samples in ``[-1, 1]``.
        lengths: ``(B,)`` int64 real samples of each clip.
    """

    samples: Tensor
    lengths: Tensor


@dataclass(frozen=True)
class AudioCodec:
    """Decodes one clip to mono float32 at ``sample_rate``; batches clips as :class:`Waveforms`.

    Channels are averaged; a file at another rate is resampled (polyphase, ``scipy``); a
    clip longer than ``max_samples`` keeps its first ``max_samples``; a clip shorter than
    ``min_samples`` (too short for one token) is padded with silence.

    Args:
        sample_rate: Output sample rate in Hz.
        min_samples: Shortest clip returned.
        max_samples: Longest clip returned; None keeps every sample.
    """

    sample_rate: int
    min_samples: int = 1
    max_samples: int | None = None
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS

    def decode(self, data: bytes) -> Tensor:
        """Decodes one clip.

        Args:
            data: The bytes of a file that ``soundfile`` reads (wav, flac, ogg...).

        Returns:
            ``(T,)`` float32 samples.

        Raises:
            soundfile.LibsndfileError: If the bytes are not a readable sound file.
            ValueError: If the file holds no samples.
        """
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        if samples.shape[0] == 0:
            raise ValueError("no audio samples")
        mono = samples.mean(axis=1)
        if rate != self.sample_rate:
            common = gcd(int(rate), self.sample_rate)
            mono = resample_poly(mono, self.sample_rate // common, int(rate) // common)
        if self.max_samples is not None:
            mono = mono[: self.max_samples]
        if len(mono) < self.min_samples:
            mono = np.pad(mono, (0, self.min_samples - len(mono)))
        return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))

    def collate(self, items: Sequence[Tensor]) -> Waveforms:
        """Pads clips with zeros to the longest.

        Args:
            items: Decoded clips.

        Returns:
            The padded samples and each clip's length.
        """
        samples = torch.nn.utils.rnn.pad_sequence(list(items), batch_first=True)
        return Waveforms(samples, torch.tensor([len(item) for item in items], dtype=torch.int64))
