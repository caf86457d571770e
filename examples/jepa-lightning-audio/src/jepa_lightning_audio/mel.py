"""Log-mel spectrograms computed with torch alone (``torch.stft`` and a mel filterbank)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_FLOOR = 1e-6
"""Added to the mel power before the log, so that silence has a finite value."""


def hz_to_mel(frequency: Tensor) -> Tensor:
    """The HTK mel scale: ``2595 * log10(1 + f / 700)``.

    Args:
        frequency: Frequencies in Hz.

    Returns:
        The same frequencies in mel.
    """
    return 2595.0 * torch.log10(1.0 + frequency / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """The inverse of :func:`hz_to_mel`.

    Args:
        mel: Frequencies in mel.

    Returns:
        The same frequencies in Hz.
    """
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    num_bins: int, num_mels: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    """Triangular filters, equally spaced on the HTK mel scale (no area normalisation).

    Filter ``m`` rises from the centre of filter ``m - 1`` to its own centre (weight 1) and
    falls to the centre of filter ``m + 1``, as linear functions of frequency.

    Args:
        num_bins: Frequency bins of the spectrum (``n_fft // 2 + 1``).
        num_mels: Number of filters.
        sample_rate: Sample rate in Hz (the last bin is at ``sample_rate / 2``).
        f_min: Lowest edge in Hz.
        f_max: Highest edge in Hz.

    Returns:
        ``(num_bins, num_mels)`` weights: a power spectrum ``(..., num_bins)`` times it is
        the mel power.

    Raises:
        ValueError: If ``0 <= f_min < f_max <= sample_rate / 2`` does not hold.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"mel filters need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, "
            f"f_max={f_max}, sample_rate={sample_rate}"
        )
    bins = torch.linspace(0, sample_rate / 2, num_bins, dtype=torch.float64)
    edges = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))),
        float(hz_to_mel(torch.tensor(f_max))),
        num_mels + 2,
        dtype=torch.float64,
    )
    hz = mel_to_hz(edges)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMelSpectrogram(nn.Module):
    """Waveforms to log-mel frames; a frame never reads past the samples it covers.

    Frames are not centred (no reflection padding at the ends): frame ``i`` covers samples
    ``[i * hop_length, i * hop_length + n_fft)``, so the frames of a clip's real samples are
    the same whatever padding follows it in a batch.

    Args:
        sample_rate: Sample rate of the waveforms in Hz.
        n_fft: Window and FFT length in samples.
        hop_length: Samples between two frames.
        n_mels: Mel filters.
        f_min: Lowest mel edge in Hz.
        f_max: Highest mel edge in Hz; default ``sample_rate / 2``.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = sample_rate / 2 if f_max is None else f_max
        self.window: Tensor
        self.filters: Tensor
        # Derived from the arguments: not weights, not in the state dict.
        window = torch.hann_window(n_fft, periodic=True)
        filters = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, self.f_max)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filters", filters, persistent=False)

    def num_frames(self, num_samples: Tensor) -> Tensor:
        """Frames that lie wholly within ``num_samples`` samples.

        Args:
            num_samples: Sample counts, any shape.

        Returns:
            Frame counts (0 below ``n_fft`` samples), same shape.
        """
        whole = torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor") + 1
        return whole.clamp(min=0)

    def forward(self, waveforms: Tensor) -> Tensor:
        """Computes the log-mel frames.

        Args:
            waveforms: ``(B, T)`` samples, ``T >= n_fft``.

        Returns:
            ``(B, num_frames(T), n_mels)`` natural-log mel power.
        """
        spectrum = torch.stft(
            waveforms.float(),
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        power = spectrum.abs().square().transpose(1, 2)  # (B, frames, bins)
        return torch.log(power @ self.filters + LOG_FLOOR)


def sinusoidal_positions(count: int, width: int, device: torch.device) -> Tensor:
    """Fixed sine/cosine position codes (Vaswani et al., 2017), any length, no table.

    Args:
        count: Positions ``0..count-1``.
        width: Code width (even).
        device: Device of the codes.

    Returns:
        ``(count, width)`` codes.
    """
    positions = torch.arange(count, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / width)
    )
    codes = torch.zeros(count, width, device=device)
    codes[:, 0::2] = torch.sin(positions * rates)
    codes[:, 1::2] = torch.cos(positions * rates)
    return codes
