"""The audio X-encoder: waveform → log-mel spectrogram → a small transformer, any length."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jepa_lightning.encoders import EncoderOutput, ModalityEncoder
from torch import Tensor, nn

from jepa_lightning_audio.codec import AudioCodec, Waveforms
from jepa_lightning_audio.mel import LogMelSpectrogram, sinusoidal_positions


class AudioEncoder(ModalityEncoder):
    """Turns mono clips of any length into one token per ``frames_per_token`` log-mel frames.

    Each token is the linear projection of ``frames_per_token`` consecutive log-mel frames
    plus a fixed sinusoidal position code, then a pre-norm transformer encoder runs over the
    tokens. The number of tokens follows the clip's length (:attr:`num_tokens` is None, so the
    predictor uses rotary positions only); a batch is padded to its longest clip and the
    padding mask keeps padded tokens out of every attention, so that a clip's tokens do not
    depend on what else is in its batch.

    Args:
        sample_rate: Sample rate of the input clips in Hz (the codec resamples to it).
        n_fft: STFT window and FFT length in samples.
        hop_length: Samples between two STFT frames.
        n_mels: Mel filters.
        f_min: Lowest mel edge in Hz.
        f_max: Highest mel edge in Hz; default ``sample_rate / 2``.
        frames_per_token: Consecutive frames stacked into one token.
        hidden_size: Token width (:attr:`output_dim`).
        num_layers: Transformer layers (0: the projected frames themselves).
        num_heads: Attention heads.
        intermediate_size: Width of each layer's feed-forward block.
        dropout: Dropout in the transformer (when trained).
        max_seconds: Longest clip the codec passes on (the rest is cut); None: no limit.
        frozen: Freeze the encoder (VL-JEPA's X-encoder is frozen).
        lr_multiplier: Learning-rate scale when not frozen.

    Raises:
        ValueError: If a size is below 1 (``num_layers`` below 0), ``hidden_size`` is odd or
            not a multiple of ``num_heads``, or the mel edges do not fit the sample rate.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        frames_per_token: int = 4,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 256,
        dropout: float = 0.0,
        max_seconds: float | None = 30.0,
        frozen: bool = True,
        lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__(frozen=frozen, lr_multiplier=lr_multiplier)
        sizes = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "n_mels": n_mels,
            "frames_per_token": frames_per_token,
            "hidden_size": hidden_size,
            "num_heads": num_heads,
            "intermediate_size": intermediate_size,
        }
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"AudioEncoder {name} must be >= 1, got {value}")
        if num_layers < 0:
            raise ValueError(f"AudioEncoder num_layers must be >= 0, got {num_layers}")
        if hidden_size % 2 or hidden_size % num_heads:
            raise ValueError(
                f"AudioEncoder hidden_size must be even and a multiple of num_heads, got "
                f"{hidden_size} and {num_heads}"
            )
        self.settings: dict[str, Any] = {**sizes, "f_min": f_min, "num_layers": num_layers}
        self.settings.update(dropout=dropout, max_seconds=max_seconds)
        self.hidden_size = hidden_size
        self.max_seconds = max_seconds
        self.spectrogram = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels, f_min, f_max)
        self.frames_per_token = frames_per_token
        self.patch = nn.Linear(n_mels * frames_per_token, hidden_size)
        self.input_norm = nn.LayerNorm(hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size,
            num_heads,
            intermediate_size,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm layers cannot take the nested-tensor path; saying so avoids its warning.
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(hidden_size)

    @property
    def output_dim(self) -> int:
        """The token width."""
        return self.hidden_size

    @property
    def min_samples(self) -> int:
        """The fewest samples that make one token."""
        return self.spectrogram.n_fft + (self.frames_per_token - 1) * self.spectrogram.hop_length

    def codec(self) -> AudioCodec:
        """An :class:`~jepa_lightning_audio.codec.AudioCodec` at this encoder's sample rate."""
        seconds = self.max_seconds
        max_samples = None if seconds is None else int(seconds * self.sample_rate)
        return AudioCodec(self.sample_rate, self.min_samples, max_samples)

    @property
    def sample_rate(self) -> int:
        """Sample rate of the input clips in Hz."""
        return self.spectrogram.sample_rate

    def describe(self) -> dict[str, Any]:
        """The base description plus every setting of the spectrogram and the transformer.

        Returns:
            A JSON-able dict.
        """
        return {
            **super().describe(),
            **self.settings,
            "f_max": self.spectrogram.f_max,
            "window": "hann",
            "log_floor": "1e-6",
        }

    def num_tokens_of(self, lengths: Tensor) -> Tensor:
        """Tokens of clips of ``lengths`` samples.

        Args:
            lengths: Sample counts.

        Returns:
            Token counts.
        """
        return torch.div(
            self.spectrogram.num_frames(lengths), self.frames_per_token, rounding_mode="floor"
        )

    def encode(self, inputs: Waveforms) -> EncoderOutput:
        """Encodes a batch of clips.

        Args:
            inputs: Padded clips and their lengths (as the codec collates them).

        Returns:
            ``(B, N, hidden_size)`` tokens, ``N`` the longest clip's token count, and the
            padding mask.

        Raises:
            ValueError: If the samples are not ``(B, T)``, or a clip is too short for a token.
        """
        samples, lengths = inputs
        if samples.dim() != 2 or lengths.shape != samples.shape[:1]:
            raise ValueError(
                f"AudioEncoder expects Waveforms (B, T) with (B,) lengths, got "
                f"{tuple(samples.shape)} and {tuple(lengths.shape)}"
            )
        counts = self.num_tokens_of(lengths)
        if bool((counts < 1).any()):
            raise ValueError(
                f"AudioEncoder needs clips of at least {self.min_samples} samples, got "
                f"lengths {lengths.tolist()}"
            )
        frames = self.spectrogram(samples)
        width = int(counts.max())
        frames = frames[:, : width * self.frames_per_token]
        patches = frames.reshape(frames.shape[0], width, -1)
        tokens = self.patch(patches) + sinusoidal_positions(width, self.output_dim, samples.device)
        mask = torch.arange(width, device=samples.device)[None, :] < counts[:, None]
        hidden = self.transformer(self.input_norm(tokens), src_key_padding_mask=~mask)
        return EncoderOutput(self.output_norm(hidden), mask)

    @torch.no_grad()
    def thumbnails(self, inputs: Waveforms, size: int) -> Tensor:
        """Each clip's log-mel spectrogram as a picture: time left to right, pitch upwards.

        Args:
            inputs: Padded clips and their lengths.
            size: Side of each picture in pixels (a clip's real frames are stretched to it).

        Returns:
            ``(B, 3, size, size)`` ``uint8`` greyscale pictures, darker where louder.
        """
        samples, lengths = inputs
        frames = self.spectrogram(samples)
        counts = self.spectrogram.num_frames(lengths).clamp(min=1).tolist()
        pictures = []
        for row, count in zip(frames, counts, strict=True):
            image = row[:count].T.flip(0)[None, None]  # (1, 1, mels, frames), high pitch on top
            low, high = image.amin(), image.amax()
            scaled = (image - low) / (high - low).clamp(min=1e-6)
            pictures.append(F.interpolate(scaled, size=(size, size), mode="bilinear")[0])
        grey = 255 * (1 - torch.stack(pictures))
        return grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).cpu()
