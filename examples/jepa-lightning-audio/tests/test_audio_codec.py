import io

import numpy as np
import pytest
import soundfile
import torch
from jepa_lightning.data import PairCollator, SampleError

from jepa_lightning_audio import AudioCodec, Waveforms


def encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def tone(frequency: float, rate: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(
        np.float32
    )


def dominant_frequency(samples: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
def test_decodes_flac_and_wav_within_16_bit_precision(fmt: str) -> None:
    clip = tone(440, 8000, 0.5)
    decoded = AudioCodec(8000).decode(encoded(clip, 8000, fmt))
    assert decoded.dtype == torch.float32 and decoded.shape == (4000,)
    torch.testing.assert_close(decoded, torch.from_numpy(clip), atol=1 / 32768, rtol=0)


def test_stereo_is_averaged() -> None:
    left, right = tone(440, 8000, 0.25), tone(880, 8000, 0.25)
    decoded = AudioCodec(8000).decode(encoded(np.stack([left, right], axis=1), 8000, "WAV"))
    torch.testing.assert_close(decoded, torch.from_numpy((left + right) / 2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_other_rates_are_resampled_keeping_the_pitch(rate: int) -> None:
    decoded = AudioCodec(8000).decode(encoded(tone(1000, rate, 1.0), rate, "FLAC"))
    assert len(decoded) == 8000
    assert abs(dominant_frequency(decoded, 8000) - 1000) <= 2


def test_long_clips_are_cut_and_short_ones_padded() -> None:
    codec = AudioCodec(8000, min_samples=500, max_samples=1000)
    long = codec.decode(encoded(tone(440, 8000, 0.5), 8000, "WAV"))
    assert len(long) == 1000
    short_clip = tone(440, 8000, 0.02)  # 160 samples
    short = codec.decode(encoded(short_clip, 8000, "WAV"))
    assert len(short) == 500 and short[160:].abs().max() == 0
    torch.testing.assert_close(short[:160], torch.from_numpy(short_clip), atol=1 / 32768, rtol=0)


def test_collate_pads_to_the_longest_and_keeps_lengths() -> None:
    items = [torch.ones(3), torch.ones(5), torch.ones(1)]
    batch = AudioCodec(8000).collate(items)
    assert isinstance(batch, Waveforms)
    assert batch.samples.shape == (3, 5) and batch.lengths.tolist() == [3, 5, 1]
    assert batch.samples.sum(dim=1).tolist() == [3, 5, 1]


def test_corrupt_audio_is_a_named_sample_error() -> None:
    collator = PairCollator(AudioCodec(8000))
    good = encoded(tone(440, 8000, 0.1), 8000, "FLAC")
    sample = {"__key__": "k1", "__url__": "shard.tar", "txt": b"a high beep"}
    assert collator.decode_sample({**sample, "flac": good})["x"].shape == (800,)
    with pytest.raises(SampleError, match="'k1' in shard 'shard.tar': unreadable flac"):
        collator.decode_sample({**sample, "flac": good[: len(good) // 3]})
    with pytest.raises(SampleError, match="unreadable wav"):
        collator.decode_sample({**sample, "wav": b"RIFF not really a wav"})
    with pytest.raises(SampleError, match="no flac/wav member"):
        collator.decode_sample({**sample, "mp4": b""})
