import math

import numpy as np
import pytest
import torch

from jepa_lightning_audio.mel import (
    LOG_FLOOR,
    LogMelSpectrogram,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    sinusoidal_positions,
)


def test_mel_scale_round_trips() -> None:
    hz = torch.tensor([0.0, 440.0, 1000.0, 7999.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)
    assert math.isclose(float(hz_to_mel(torch.tensor(1000.0))), 999.99, abs_tol=0.1)


def test_filters_are_triangles_peaking_at_their_centres() -> None:
    rate, n_fft, mels = 8000, 512, 20
    filters = mel_filterbank(n_fft // 2 + 1, mels, rate, 0.0, 4000.0)
    bins = np.linspace(0, 4000, n_fft // 2 + 1)
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(torch.tensor(4000.0))), mels + 2))[1:-1]
    for m in range(mels):
        column = filters[:, m].numpy()
        peak = int(column.argmax())
        assert abs(bins[peak] - float(centres[m])) <= 4000 / (n_fft // 2)  # within one bin
        assert column.max() <= 1.0 and column.min() == 0.0
        rising, falling = column[: peak + 1], column[peak:]
        assert (np.diff(rising) >= 0).all() and (np.diff(falling) <= 0).all()


def test_filterbank_rejects_edges_beyond_nyquist() -> None:
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(129, 16, 8000, 0.0, 5000.0)


def brute_force_log_mel(signal: np.ndarray, module: LogMelSpectrogram) -> np.ndarray:
    """Frame by frame with numpy: Hann window, rfft, power, filters, log."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(module.n_fft) / module.n_fft)
    starts = range(0, len(signal) - module.n_fft + 1, module.hop_length)
    frames = np.stack([signal[s : s + module.n_fft] * window for s in starts])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ module.filters.double().numpy() + LOG_FLOOR)


def test_log_mel_matches_a_frame_by_frame_reference() -> None:
    module = LogMelSpectrogram(8000, n_fft=128, hop_length=48, n_mels=16)
    signal = np.random.default_rng(0).uniform(-1, 1, 1000)
    got = module(torch.tensor(signal, dtype=torch.float32)[None])[0].double().numpy()
    want = brute_force_log_mel(signal, module)
    assert got.shape == want.shape == (int(module.num_frames(torch.tensor(1000))), 16)
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 2500.0])
def test_a_tone_peaks_in_the_band_around_its_frequency(frequency: float) -> None:
    module = LogMelSpectrogram(8000, n_fft=256, hop_length=128, n_mels=32)
    time = torch.arange(4000) / 8000
    frames = module(torch.sin(2 * math.pi * frequency * time)[None])[0]
    band = int(frames.mean(dim=0).argmax())
    edges = mel_to_hz(torch.linspace(0, float(hz_to_mel(torch.tensor(4000.0))), 34))
    assert edges[band] <= frequency <= edges[band + 2]


def test_frame_counts() -> None:
    module = LogMelSpectrogram(8000, n_fft=128, hop_length=64, n_mels=8)
    lengths = torch.tensor([0, 127, 128, 191, 192, 1000])
    assert module.num_frames(lengths).tolist() == [0, 0, 1, 1, 2, 14]
    assert module(torch.zeros(1, 1000)).shape[1] == 14


def test_sinusoidal_positions() -> None:
    codes = sinusoidal_positions(50, 8, torch.device("cpu"))
    assert codes.shape == (50, 8)
    torch.testing.assert_close(codes[0], torch.tensor([0.0, 1.0] * 4))
    assert torch.allclose(codes.norm(dim=1), torch.full((50,), 2.0))  # 4 (sin, cos) pairs
