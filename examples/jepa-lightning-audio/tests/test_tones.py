import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from audio_testing import SPEC
from jepa_lightning.data import read_shard_index
from jepa_lightning.tools.shards import ShardWriter

from jepa_lightning_audio.tones import (
    CHIRP_HZ,
    EVENTS,
    HIGH_HZ,
    LOW_HZ,
    TonesSpec,
    ensure_tones_shards,
    generate_clip,
    tones_captions,
    write_tones_shards,
)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_captions_cover_every_ordered_sequence() -> None:
    captions = tones_captions(SPEC)
    assert len(captions) == len(set(captions)) == 7 + 7 * 6
    assert "a high beep, then a low hum" in captions and "a low hum, then a high beep" in captions
    assert len(tones_captions(TonesSpec(max_events=3))) == 7 + 42 + 210


def test_every_caption_appears_in_each_cycle() -> None:
    captions = [generate_clip(i, SPEC)[1] for i in range(2 * 49)]
    assert sorted(captions[:49]) == sorted(tones_captions(SPEC))
    assert sorted(captions[49:]) == sorted(tones_captions(SPEC))
    assert captions[:49] != captions[49:]  # a new order each cycle


def test_same_seed_same_clip_and_splits_differ() -> None:
    clip, caption, meta = generate_clip(5, SPEC, seed=3, split="train")
    again = generate_clip(5, SPEC, seed=3, split="train")
    assert np.array_equal(clip, again[0]) and caption == again[1] and meta == again[2]
    assert not np.array_equal(clip[:100], generate_clip(5, SPEC, seed=3, split="val")[0][:100])


@pytest.mark.parametrize("index", range(0, 49, 4))
def test_events_sound_as_the_caption_says(index: int) -> None:
    clip, caption, meta = generate_clip(index, SPEC)
    rate = SPEC.sample_rate
    assert caption == ", then ".join(EVENTS[event["event"]] for event in meta["events"])
    assert abs(meta["duration"] - len(clip) / rate) < 1e-9
    for event in meta["events"]:
        start = round(event["start"] * rate)
        part = clip[start : start + round(event["duration"] * rate)]
        name = event["event"]
        if name.endswith(("beep", "hum")):
            band = HIGH_HZ if name.startswith("high") else LOW_HZ
            assert band[0] - 20 <= dominant_frequency(part, rate) <= band[1] + 20
        elif name.endswith("chirp"):
            first, last = (dominant_frequency(half, rate) for half in np.array_split(part, 2))
            assert (first < last) == name.startswith("rising")
            assert CHIRP_HZ[0] <= min(first, last) and max(first, last) <= CHIRP_HZ[1]
        else:  # noise: flat spectrum, no dominant tone
            spectrum = np.abs(np.fft.rfft(part))
            assert spectrum.max() < 10 * np.median(spectrum)
    gaps = [
        b["start"] - (a["start"] + a["duration"]) for a, b in itertools.pairwise(meta["events"])
    ]
    assert all(gap >= 0.08 for gap in gaps)


def test_clips_differ_in_length() -> None:
    lengths = [len(generate_clip(i, SPEC)[0]) / SPEC.sample_rate for i in range(60)]
    assert min(lengths) < 0.6 and max(lengths) > 1.5


def test_shards_hold_flac_caption_and_events(tmp_path: Path) -> None:
    folder = write_tones_shards(str(tmp_path / "train"), 12, SPEC, samples_per_shard=5, seed=1)
    index = read_shard_index(folder)
    assert index.num_samples == 12 and index.num_shards == 3
    assert index.metadata["generator"] == "jepa-lightning-audio/tones"
    with tarfile.open(index.urls[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    clip, caption, meta = generate_clip(0, SPEC, seed=1)
    decoded, rate = soundfile.read(io.BytesIO(members["train-000000.flac"]), dtype="float32")
    assert rate == 8000 and np.abs(decoded - clip).max() <= 1 / 32768
    assert members["train-000000.txt"].decode() == caption
    assert json.loads(members["train-000000.json"]) == meta


def test_ensure_writes_once_and_rewrites_on_change(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    ensure_tones_shards(str(folder), 6, SPEC)
    shard = folder / "train-000000.tar"
    written = shard.stat().st_mtime_ns
    ensure_tones_shards(str(folder), 6, SPEC)
    assert shard.stat().st_mtime_ns == written  # the same data: left alone
    ensure_tones_shards(str(folder), 7, SPEC)
    assert read_shard_index(folder).num_samples == 7


def test_ensure_refuses_a_folder_of_other_shards(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "train", metadata={"generator": "mine"}) as writer:
        writer.write({"__key__": "a", "txt": "x"})
    with pytest.raises(ValueError, match="did not write"):
        ensure_tones_shards(str(tmp_path), 6, SPEC)


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_events"):
        TonesSpec(max_events=4)
    with pytest.raises(ValueError, match="sample_rate"):
        TonesSpec(sample_rate=4000)
