"""The "tones" set: generated clips of beeps, hums, chirps and noise bursts, with captions.

A clip is a sequence of one to ``max_events`` different sound events, in order, with silence
around and between them; its caption names the events in that order::

    "a high beep"
    "a low hum, then a rising chirp"
    "a burst of noise, then a high beep, then a falling chirp"      (max_events=3)

Events: a *beep* (a short tone, 0.12-0.25 s) and a *hum* (a long tone with a second
harmonic, 0.5-0.8 s), each *high* (1200-2000 Hz) or *low* (220-420 Hz); a *rising* or
*falling chirp* (a log sweep between 300 and 2400 Hz, 0.3-0.5 s); a *burst of noise* (white
noise, 0.15-0.35 s). Telling the captions apart needs the pitch, the kind and the order of
the events. Durations, gaps, frequencies, levels and a faint background noise vary, so clips
differ in length (about 0.3 to 2.5 s with two events) and no two clips of a caption are
alike.

Captions are balanced as in the shapes set: sample ``i`` takes caption ``i mod C`` of a
seeded order that changes every cycle of the ``C`` captions, so every caption appears
(nearly) equally often. The clips are written as FLAC (16-bit) in WebDataset shards (``flac``
+ ``txt`` + ``json`` with the events) by :class:`jepa_lightning.tools.shards.ShardWriter`;
the same parameters and seed give byte-identical shards.
"""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from jepa_lightning.data.index import INDEX_FILENAME, read_shard_index
from jepa_lightning.data.seeds import seed_from
from jepa_lightning.tools.shards import ShardWriter

__all__ = [
    "EVENTS",
    "TonesSpec",
    "ensure_tones_shards",
    "generate_clip",
    "tones_captions",
    "write_tones_shards",
]

GENERATOR_NAME = "jepa-lightning-audio/tones"
GENERATOR_VERSION = 1

EVENTS: dict[str, str] = {
    "high beep": "a high beep",
    "low beep": "a low beep",
    "high hum": "a high hum",
    "low hum": "a low hum",
    "rising chirp": "a rising chirp",
    "falling chirp": "a falling chirp",
    "noise burst": "a burst of noise",
}
"""Event name → its phrase in captions."""

HIGH_HZ = (1200.0, 2000.0)
LOW_HZ = (220.0, 420.0)
CHIRP_HZ = (300.0, 2400.0)
FADE_SECONDS = 0.01
BACKGROUND_LEVEL = 0.003


@dataclass(frozen=True)
class TonesSpec:
    """What the tones generator draws.

    Args:
        sample_rate: Sample rate of the clips in Hz (at least 8000: the highest sweep is
            2400 Hz).
        max_events: Longest event sequence (1 to 3); every sequence of distinct events up to
            this length is a caption.

    Raises:
        ValueError: If a value is out of range.
    """

    sample_rate: int = 16000
    max_events: int = 2

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000, got {self.sample_rate}")
        if not 1 <= self.max_events <= 3:
            raise ValueError(f"max_events must be 1, 2 or 3, got {self.max_events}")


@lru_cache(maxsize=8)
def _sequences(max_events: int) -> tuple[tuple[str, ...], ...]:
    names = list(EVENTS)
    return tuple(
        sequence
        for count in range(1, max_events + 1)
        for sequence in itertools.permutations(names, count)
    )


def tones_captions(spec: TonesSpec = TonesSpec()) -> list[str]:
    """Every caption the spec can give (49 for two events, 259 for three).

    Args:
        spec: The generator spec.

    Returns:
        The captions, in a fixed order.
    """
    return [_caption(sequence) for sequence in _sequences(spec.max_events)]


def _caption(sequence: tuple[str, ...]) -> str:
    return ", then ".join(EVENTS[name] for name in sequence)


def _fade(sound: np.ndarray, rate: int) -> np.ndarray:
    ramp = min(int(FADE_SECONDS * rate), len(sound) // 2)
    envelope = np.ones(len(sound))
    rising = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    envelope[:ramp], envelope[len(sound) - ramp :] = rising, rising[::-1]
    return sound * envelope


def _event(name: str, rng: random.Random, noise: np.random.Generator, rate: int) -> np.ndarray:
    """One event's samples (before its level), with short fades against clicks."""
    kind = name.split()[-1]
    duration = {"beep": (0.12, 0.25), "hum": (0.5, 0.8), "chirp": (0.3, 0.5), "burst": (0.15, 0.35)}
    seconds = rng.uniform(*duration[kind])
    time = np.arange(int(seconds * rate)) / rate
    if kind in ("beep", "hum"):
        frequency = rng.uniform(*(HIGH_HZ if name.startswith("high") else LOW_HZ))
        phase = 2 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi)
        sound = np.sin(phase) + (0.3 * np.sin(2 * phase) if kind == "hum" else 0.0)
    elif kind == "chirp":
        start, stop = CHIRP_HZ if name.startswith("rising") else CHIRP_HZ[::-1]
        # A log sweep: the phase is the integral of start * (stop / start) ** (t / seconds).
        ratio = np.log(stop / start)
        sound = np.sin(2 * np.pi * start * seconds / ratio * (np.exp(ratio * time / seconds) - 1))
    else:
        sound = noise.uniform(-1.0, 1.0, len(time))
    return _fade(sound / np.abs(sound).max(), rate)


def generate_clip(
    index: int, spec: TonesSpec = TonesSpec(), seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Generates sample ``index`` of a split.

    Args:
        index: The sample's index in its split.
        spec: What to draw.
        seed: Random seed.
        split: Split name (part of the random streams).

    Returns:
        The clip (float32 mono samples in ``[-1, 1]`` at ``spec.sample_rate``), its caption
        and its metadata (``events``: name, start and duration in seconds; ``duration``;
        ``labels``: the first and last event).
    """
    sequences = _sequences(spec.max_events)
    cycle, offset = divmod(index, len(sequences))
    order = list(range(len(sequences)))
    random.Random(seed_from("tones-order", seed, split, cycle)).shuffle(order)
    sequence = sequences[order[offset]]
    rng = random.Random(seed_from("tones", seed, split, index))
    noise = np.random.default_rng(seed_from("tones-noise", seed, split, index))
    rate = spec.sample_rate
    parts = [np.zeros(int(rng.uniform(0.0, 0.25) * rate))]
    events = []
    position = len(parts[0])
    for number, name in enumerate(sequence):
        if number:
            gap = np.zeros(int(rng.uniform(0.08, 0.3) * rate))
            parts.append(gap)
            position += len(gap)
        sound = rng.uniform(0.4, 0.8) * _event(name, rng, noise, rate)
        events.append({"event": name, "start": position / rate, "duration": len(sound) / rate})
        parts.append(sound)
        position += len(sound)
    parts.append(np.zeros(int(rng.uniform(0.0, 0.25) * rate)))
    clip = np.concatenate(parts)
    clip += noise.normal(0.0, BACKGROUND_LEVEL, len(clip))
    meta = {
        "index": index,
        "events": events,
        "duration": len(clip) / rate,
        "labels": {"first": sequence[0], "last": sequence[-1]},
    }
    return np.clip(clip, -1.0, 1.0).astype(np.float32), _caption(sequence), meta


def encode_flac(clip: np.ndarray, sample_rate: int) -> bytes:
    """Encodes a clip as 16-bit FLAC.

    Args:
        clip: Mono samples in ``[-1, 1]``.
        sample_rate: Sample rate in Hz.

    Returns:
        The FLAC file's bytes.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def tones_metadata(
    num_samples: int, samples_per_shard: int, seed: int, split: str, spec: TonesSpec
) -> dict[str, Any]:
    """The metadata that :func:`write_tones_shards` records in ``index.json``.

    Args:
        num_samples: Number of samples.
        samples_per_shard: Maximum samples per shard.
        seed: Random seed.
        split: Split name.
        spec: Generator spec.

    Returns:
        A JSON-compatible dict identifying the generated data exactly.
    """
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "num_samples": num_samples,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "split": split,
        "spec": asdict(spec),
        "num_captions": len(_sequences(spec.max_events)),
    }


def write_tones_shards(
    out_dir: str,
    num_samples: int,
    spec: TonesSpec = TonesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    overwrite: bool = False,
) -> str:
    """Generates the tones set as WebDataset shards (``flac`` + ``txt`` + ``json``).

    Args:
        out_dir: Output folder (one per split), created if missing.
        num_samples: Number of samples (>= 1).
        spec: What to draw.
        samples_per_shard: Maximum samples per shard.
        seed: Random seed; the same parameters give byte-identical shards.
        split: Split name: the shard prefix and part of the random streams, so validation
            clips differ from training clips with the same seed.
        overwrite: Replace shards already in ``out_dir``.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``num_samples`` < 1.
        FileExistsError: If ``out_dir`` holds shards and not ``overwrite``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    metadata = tones_metadata(num_samples, samples_per_shard, seed, split, spec)
    width = max(6, len(str(num_samples - 1)))
    with ShardWriter(out_dir, split, samples_per_shard, metadata, overwrite=overwrite) as writer:
        for index in range(num_samples):
            clip, caption, meta = generate_clip(index, spec, seed, split)
            writer.write(
                {
                    "__key__": f"{split}-{index:0{width}d}",
                    "flac": encode_flac(clip, spec.sample_rate),
                    "txt": caption,
                    "json": meta,
                }
            )
    return str(writer.folder)


def ensure_tones_shards(
    out_dir: str,
    num_samples: int,
    spec: TonesSpec = TonesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
) -> str:
    """Writes the tones shards unless ``out_dir`` already holds exactly these.

    Cheap when they exist (reads ``index.json`` only), so ``prepare_data`` calls it every run.

    Args:
        out_dir: Output folder of this split.
        num_samples: Number of samples.
        spec: What to draw.
        samples_per_shard: Maximum samples per shard.
        seed: Random seed.
        split: Split name.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``out_dir`` holds shards that this generator did not write.
    """
    wanted = tones_metadata(num_samples, samples_per_shard, seed, split, spec)
    folder = Path(out_dir).absolute()
    if (folder / INDEX_FILENAME).is_file():
        try:
            metadata = read_shard_index(folder, check_files=True).metadata
        except (OSError, ValueError):
            metadata = {}
        if metadata and metadata.get("generator") != GENERATOR_NAME:
            raise ValueError(
                f"{folder} holds shards that the tones generator did not write; refusing to "
                "overwrite them (choose another folder)"
            )
        if metadata == wanted:
            return str(folder)
    return write_tones_shards(
        out_dir, num_samples, spec, samples_per_shard, seed, split, overwrite=True
    )
