import json
import math
import subprocess
import sys

import pytest
import torch
from audio_testing import TINY_AUDIO, clips, tiny_model
from jepa_lightning.data import encoder_fingerprint

from jepa_lightning_audio import AudioCodec, AudioEncoder, Waveforms

QUERIES = ["what comes first?", None, "is it high?"]


def garbage_padded(batch: Waveforms, extra: int, seed: int) -> Waveforms:
    """The same clips with their padding replaced by loud noise, and ``extra`` more of it."""
    generator = torch.Generator().manual_seed(seed)
    rows, width = batch.samples.shape[0], batch.samples.shape[1] + extra
    samples = torch.rand(rows, width, generator=generator) * 2 - 1
    for row, length in enumerate(batch.lengths.tolist()):
        samples[row, :length] = batch.samples[row, :length]
    return Waveforms(samples, batch.lengths)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trainable"])
@pytest.mark.parametrize("queries", [None, QUERIES], ids=["no_query", "query"])
def test_padding_does_not_change_the_prediction(
    frozen: bool, queries: list[str | None] | None
) -> None:
    model = tiny_model(frozen=frozen)
    codec = model.x_encoder.codec()
    items = clips(3)
    assert len({len(item) for item in items}) == 3  # three lengths
    batch = codec.collate(items)
    with torch.no_grad():
        plain = model.embed_inputs(batch, queries=queries)
        noisy = model.embed_inputs(garbage_padded(batch, 3000, seed=1), queries=queries)
        torch.testing.assert_close(plain, noisy, atol=1e-5, rtol=0)
        for row, item in enumerate(items):  # each clip alone, with no padding at all
            alone = model.embed_inputs(
                codec.collate([item]), queries=None if queries is None else [queries[row]]
            )
            torch.testing.assert_close(plain[row : row + 1], alone, atol=1e-5, rtol=0)


def test_the_padding_would_matter_if_it_were_read() -> None:
    model = tiny_model()
    batch = garbage_padded(model.x_encoder.codec().collate(clips(3)), 3000, seed=1)
    full = Waveforms(batch.samples, torch.full_like(batch.lengths, batch.samples.shape[1]))
    with torch.no_grad():
        assert not torch.allclose(model.embed_inputs(batch), model.embed_inputs(full), atol=1e-3)


def test_tokens_follow_the_clip_length() -> None:
    model = tiny_model()
    encoder = model.x_encoder
    assert encoder.num_tokens is None and encoder.grid is None
    assert model.predictor.position_embedding is None  # rotary positions only
    lengths = torch.tensor([encoder.min_samples, 1000, 4000])
    batch = Waveforms(torch.zeros(3, 4000), lengths)
    tokens, mask = encoder(batch)
    # frames = (n - 128) // 64 + 1, two frames a token
    expected = [((n - 128) // 64 + 1) // 2 for n in lengths.tolist()]
    assert expected[0] == 1 and mask.sum(dim=1).tolist() == expected
    assert tokens.shape == (3, max(expected), 16)


def test_bad_inputs_are_named() -> None:
    encoder = AudioEncoder(**TINY_AUDIO)
    with pytest.raises(ValueError, match="at least 192 samples"):
        encoder(Waveforms(torch.zeros(2, 500), torch.tensor([500, 100])))
    with pytest.raises(ValueError, match=r"expects Waveforms \(B, T\)"):
        encoder(Waveforms(torch.zeros(2, 1, 500), torch.tensor([500, 500])))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        AudioEncoder(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="hop_length must be >= 1"):
        AudioEncoder(hop_length=0)
    with pytest.raises(ValueError, match="f_max"):
        AudioEncoder(sample_rate=8000, f_max=6000)


def test_codec_matches_the_encoder() -> None:
    encoder = AudioEncoder(**TINY_AUDIO, max_seconds=2.0)
    assert encoder.codec() == AudioCodec(8000, min_samples=192, max_samples=16000)


def test_frozen_and_trainable() -> None:
    frozen = AudioEncoder(**TINY_AUDIO)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    batch = Waveforms(torch.randn(2, 2000), torch.tensor([2000, 1500]))
    assert not frozen(batch).tokens.requires_grad
    trainable = AudioEncoder(**TINY_AUDIO, frozen=False, lr_multiplier=0.1)
    assert trainable.training
    trainable(batch).tokens.sum().backward()
    assert all(p.grad is not None for p in trainable.parameters())


FINGERPRINT_SCRIPT = """
import json, sys, torch
from jepa_lightning.data import encoder_fingerprint
from jepa_lightning_audio import AudioEncoder
torch.manual_seed(0)
print(encoder_fingerprint(AudioEncoder(**json.loads(sys.argv[1])))["hash"])
"""


@pytest.mark.slow  # two fresh interpreters
def test_fingerprint_is_stable_across_processes_and_follows_the_weights() -> None:
    def in_new_process() -> str:
        command = [sys.executable, "-c", FINGERPRINT_SCRIPT, json.dumps(TINY_AUDIO)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    first, second = in_new_process(), in_new_process()
    torch.manual_seed(0)
    encoder = AudioEncoder(**TINY_AUDIO)
    here = encoder_fingerprint(encoder)
    assert first == second == here["hash"]
    json.dumps(here["encoder"])  # JSON-able: the cache's index.json records it
    with torch.no_grad():
        encoder.patch.weight[0, 0] += 0.5
    assert encoder_fingerprint(encoder)["hash"] != first
    torch.manual_seed(0)
    other_settings = AudioEncoder(**{**TINY_AUDIO, "hop_length": 32})  # same weights' shapes
    assert encoder_fingerprint(other_settings)["hash"] != first


def test_thumbnails_show_high_sounds_above_low_ones() -> None:
    encoder = AudioEncoder(**{**TINY_AUDIO, "n_mels": 32})
    time = torch.arange(4000) / 8000
    high, low = torch.sin(2 * math.pi * 2000 * time), torch.sin(2 * math.pi * 200 * time)
    batch = Waveforms(
        torch.stack([high, torch.cat([low[:2000], torch.zeros(2000)])]), torch.tensor([4000, 2000])
    )
    pictures = encoder.thumbnails(batch, 24)
    assert pictures.shape == (2, 3, 24, 24) and pictures.dtype == torch.uint8
    darkest_rows = (255 - pictures[:, 0].float()).mean(dim=2).argmax(dim=1).tolist()
    assert darkest_rows[0] < 8 and darkest_rows[1] > 16  # the image's top is high pitch


def test_describe_records_every_setting() -> None:
    description = AudioEncoder(**TINY_AUDIO).describe()
    assert description["class"] == "jepa_lightning_audio.encoder.AudioEncoder"
    assert {k: description[k] for k in TINY_AUDIO} == TINY_AUDIO
    assert description["f_max"] == 4000 and description["num_tokens"] is None
