from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER
from shard_factory import (
    CORRUPT_IMAGE,
    EMPTY_CAPTION,
    NO_CAPTION,
    NO_IMAGE,
    TRUNCATED,
    write_shards,
)
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

import jepa_lightning.data.pipeline as pipeline
from jepa_lightning.batch import Batch
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.datamodule import EpochDataLoader
from jepa_lightning.data.features import FeatureCodec
from jepa_lightning.data.pipeline import (
    Shard,
    ShardRange,
    ShardStream,
    count_samples,
    resolve_shards,
    take_samples,
)
from jepa_lightning.encoders.text import TextCodec
from jepa_lightning.encoders.vision import ImageCodec

SIZES = (7, 50, 13)


@pytest.fixture(scope="module")
def collator() -> PairCollator:
    return PairCollator(ImageCodec(16), TextCodec(AutoTokenizer.from_pretrained(TOKENIZER), 16))


def _run(stream: ShardStream, epoch: int = 0) -> list[Batch]:
    stream.set_epoch(epoch)
    return list(stream)


def _keys(batches: list[Batch]) -> list[str]:
    """The keys of the rows that count (no evaluation filler row)."""
    return [key for batch in batches for key in batch.valid_rows().keys]


@pytest.fixture(scope="module")
def uneven_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uneven_shards")
    write_shards(folder, SIZES)
    return folder


@pytest.fixture(scope="module")
def shards(uneven_folder: Path) -> list[Shard]:
    return resolve_shards(str(uneven_folder))


def test_resolve_sources(tmp_path: Path, uneven_folder: Path) -> None:
    indexed = resolve_shards(str(uneven_folder))
    assert [s.num_samples for s in indexed] == list(SIZES)
    bare = tmp_path / "bare"
    paths = write_shards(bare, (2, 3), index=False)
    assert [s.num_samples for s in resolve_shards(str(bare))] == [None, None]
    pattern = str(bare / "shard-{0000..0001}.tar")
    assert [s.url for s in resolve_shards(pattern)] == paths
    mixed = resolve_shards([str(uneven_folder), paths[0], f"pipe:cat {paths[1]}"])
    assert len(mixed) == 5 and mixed[-1].url == f"pipe:cat {paths[1]}"
    assert count_samples(mixed[-1].url) == 3
    odd = tmp_path / "odd [name]"  # glob characters in the folder name are literal
    write_shards(odd, (2, 3), index=False)
    assert [s.num_samples for s in resolve_shards(str(odd))] == [None, None]


def test_missing_shard_and_empty_source_fail_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"data\.train_shards: 2 of 2 shards .*nope-0000\.tar, .*nope-0001\.tar",
    ):
        resolve_shards(str(tmp_path / "nope-{0000..0001}.tar"), "data.train_shards")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data\.val_shards: folder .* no index\.json and no"):
        resolve_shards(str(tmp_path / "empty"), "data.val_shards")
    with pytest.raises(ValueError, match="names no shard"):
        resolve_shards([], "data.train_shards")
    # Only local paths are checked (as the reader tells them apart); streams are read later.
    streams = ["-", "pipe:cat nope.tar", "https://host/nope.tar", "file:///nope.tar"]
    assert [shard.url for shard in resolve_shards(streams)] == streams


def test_take_samples_wraps_around() -> None:
    shards = [Shard("a", 3), Shard("b", 0), Shard("c", 2)]
    assert take_samples(shards, 2, 6) == [
        ShardRange("a", 2, 3, 0),
        ShardRange("c", 0, 2, 1),
        ShardRange("a", 0, 3, 3),
    ]


@pytest.mark.parametrize("world", [2, 3])
def test_epoch_mode_reads_each_sample_once_and_equal_batches(
    shards: list[Shard], collator: PairCollator, world: int
) -> None:
    batch_size = 4
    per_rank = sum(SIZES) // (world * batch_size)
    orders = []
    for epoch in range(2):
        keys: list[str] = []
        for rank in range(world):
            stream = ShardStream(
                shards, collator, batch_size, "epoch", per_rank, rank, world, shuffle_buffer=8
            )
            batches = _run(stream, epoch)
            assert len(batches) == len(stream) == per_rank
            assert all(len(b) == batch_size for b in batches)
            keys += _keys(batches)
        assert len(keys) == len(set(keys)) == world * per_rank * batch_size
        orders.append(keys)
    assert orders[0] != orders[1]  # the shard order and the buffer change per epoch


def test_epoch_mode_without_sizes_deals_whole_shards(
    tmp_path: Path, collator: PairCollator
) -> None:
    bare = [Shard(url) for url in write_shards(tmp_path, SIZES, index=False)]
    for rank in range(2):
        stream = ShardStream(bare, collator, 4, "epoch", 9, rank, 2)
        assert len(_run(stream)) == 9  # rank with 7 + 13 samples cycles, the other stops
    with pytest.raises(ValueError, match="3 shards for 4 ranks"):
        list(ShardStream(bare, collator, 4, "epoch", 9, 3, 4))


def test_resampled_mode_equal_batches_and_weights(
    shards: list[Shard], collator: PairCollator
) -> None:
    lengths = [
        len(_run(ShardStream(shards, collator, 4, "resampled", 5, rank, 2))) for rank in range(2)
    ]
    assert lengths == [5, 5]
    only_last = ShardStream(shards, collator, 4, "resampled", 5, shard_weights=[0, 0, 1])
    assert {key[:2] for key in _keys(_run(only_last))} == {"s0"}
    assert all(57 <= int(key[1:]) < 70 for key in _keys(_run(only_last)))
    again = ShardStream(shards, collator, 4, "resampled", 5, shard_weights=[0, 0, 1])
    assert _keys(_run(again)) == _keys(_run(only_last))  # seeded


def _check_eval_batches(batches: list[Batch], batch_size: int) -> None:
    """At most batch_size rows; a batch with no sample of its own holds one filler row."""
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        if batch.valid is not None:
            assert len(batch) == 1 and not batch.valid.any() and len(batch.valid_rows()) == 0


@pytest.mark.parametrize(
    ("world", "batch_size"), [(1, 16), (2, 16), (3, 8), (2, 1), (3, 1), (3, 2)]
)
def test_eval_mode_covers_every_sample_once_in_equal_steps(
    shards: list[Shard], collator: PairCollator, world: int, batch_size: int
) -> None:
    keys: list[str] = []
    lengths = []
    for rank in range(world):
        stream = ShardStream(shards, collator, batch_size, "eval", rank=rank, world_size=world)
        batches = _run(stream)
        lengths.append(len(batches))
        assert len(batches) == len(stream)
        _check_eval_batches(batches, batch_size)
        assert sum(b.skipped for b in batches) == 0
        keys += _keys(batches)
    assert len(set(lengths)) == 1
    assert keys == [f"s{n:05d}" for n in range(sum(SIZES))]  # in order, each once


def test_eval_mode_with_workers(shards: list[Shard], collator: PairCollator) -> None:
    stream = ShardStream(shards, collator, 8, "eval", rank=1, world_size=2)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    keys = [key for batch in loader for key in batch.keys]
    assert len(loader) == len(stream)
    assert sorted(keys) == [f"s{n:05d}" for n in range(35, 70)]


def test_eval_with_fewer_samples_than_ranks(tmp_path: Path, collator: PairCollator) -> None:
    write_shards(tmp_path, (2,))
    few = resolve_shards(str(tmp_path))
    per_rank = [_run(ShardStream(few, collator, 4, "eval", rank=r, world_size=3)) for r in range(3)]
    assert [len(batches) for batches in per_rank] == [1, 1, 1]
    assert [_keys(batches) for batches in per_rank] == [[], ["s00000"], ["s00001"]]
    assert per_rank[0][0].keys == ["s00000"]  # the filler: the set's first readable sample
    with pytest.raises(ValueError, match="hold no sample"):
        ShardStream([Shard("a", 0)], collator, 4, "eval", world_size=3)


BAD = {6: CORRUPT_IMAGE, 20: NO_CAPTION, 69: TRUNCATED}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> list[Shard]:
    folder = tmp_path_factory.mktemp("broken")
    write_shards(folder, SIZES, bad=BAD)
    return resolve_shards(str(folder))


# Shards made outside the project: uneven sizes, every kind of bad sample, one shard cut inside
# its last member and one cut in the middle (the index still lists the samples it lost).
ACCEPTANCE_SIZES = (3, 41, 17, 9)
ACCEPTANCE_BAD = {1: CORRUPT_IMAGE, 10: NO_CAPTION, 30: EMPTY_CAPTION, 50: NO_IMAGE}
ACCEPTANCE_BAD |= {60: TRUNCATED, 66: TRUNCATED}
ACCEPTANCE_LOST = {*ACCEPTANCE_BAD, 67, 68, 69}
ACCEPTANCE_GOOD = [f"s{n:05d}" for n in range(70) if n not in ACCEPTANCE_LOST]


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory: pytest.TempPathFactory) -> list[Shard]:
    folder = tmp_path_factory.mktemp("acceptance")
    write_shards(folder, ACCEPTANCE_SIZES, bad=ACCEPTANCE_BAD)
    return resolve_shards(str(folder))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 8, 64])
def test_eval_reads_each_good_sample_once_and_counts_every_bad_one(
    acceptance: list[Shard], collator: PairCollator, world: int, batch_size: int
) -> None:
    keys: list[str] = []
    skipped, lengths = 0, set()
    for rank in range(world):
        stream = ShardStream(acceptance, collator, batch_size, "eval", rank=rank, world_size=world)
        batches = _run(stream)
        _check_eval_batches(batches, batch_size)
        lengths.add(len(batches))
        skipped += sum(b.skipped for b in batches)
        keys += _keys(batches)
    assert len(lengths) == 1
    assert keys == ACCEPTANCE_GOOD  # in order: each good sample once, no bad one
    assert skipped == len(ACCEPTANCE_LOST)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_eval_workers_started_without_fork(
    acceptance: list[Shard], collator: PairCollator, start_method: str
) -> None:
    keys: list[str] = []
    skipped = 0
    for rank in range(2):
        stream = ShardStream(acceptance, collator, 1, "eval", rank=rank, world_size=2)
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=2,
            multiprocessing_context=start_method,
        )
        batches = list(loader)
        assert len(batches) == len(stream) == 35
        skipped += sum(b.skipped for b in batches)
        keys += _keys(batches)
    assert sorted(keys) == ACCEPTANCE_GOOD and skipped == len(ACCEPTANCE_LOST)


def test_epoch_mode_replaces_bad_samples(broken: list[Shard], collator: PairCollator) -> None:
    for epoch in range(3):
        stream = ShardStream(broken, collator, 5, "epoch", 14, shuffle_buffer=4)
        batches = _run(stream, epoch)
        keys = Counter(_keys(batches))
        assert len(batches) == 14 and not keys.keys() & {f"s{n:05d}" for n in BAD}
        # One pass reads every sample; the refill re-reads the start of the first shard.
        assert sum(b.skipped for b in batches) >= len(BAD)
        assert len(keys) == sum(SIZES) - len(BAD)


def test_damaged_tar_header_is_counted_and_logged(
    tmp_path: Path, collator: PairCollator, caplog: pytest.LogCaptureFixture
) -> None:
    # TarFile takes a header with a bad checksum for the end of the shard: without a word,
    # the samples after it would be gone.
    (path,) = write_shards(tmp_path, (10,))
    with tarfile.open(path) as archive:
        offset = archive.getmember("s00004.jpg").offset
    data = bytearray(Path(path).read_bytes())
    data[offset + 3] ^= 1
    Path(path).write_bytes(bytes(data))
    stream = ShardStream(resolve_shards(str(tmp_path)), collator, 2, "epoch", 2, shuffle_buffer=1)
    with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
        batches = _run(stream)
    assert _keys(batches) == ["s00000", "s00001", "s00002", "s00003"]
    assert sum(b.skipped for b in batches) == 1
    (warning,) = [
        r.getMessage() for r in caplog.records if "unreadable tar header" in r.getMessage()
    ]
    # The reader had grouped 3 samples when the error came; the fourth was complete and is kept.
    assert f"shard {path!r} unreadable after 3 samples" in warning
    assert f"unreadable tar header at byte {offset}" in warning


def test_eval_batch_of_only_bad_samples_holds_a_filler(
    tmp_path: Path, collator: PairCollator
) -> None:
    write_shards(tmp_path, (6,), bad={0: CORRUPT_IMAGE, 1: NO_CAPTION})
    stream = ShardStream(resolve_shards(str(tmp_path)), collator, 2, "eval")
    batches = _run(stream)
    # The filler copies the next readable sample and counts nowhere.
    assert [b.keys for b in batches] == [["s00002"], ["s00002", "s00003"], ["s00004", "s00005"]]
    assert [b.valid_rows().keys for b in batches] == [
        [],
        ["s00002", "s00003"],
        ["s00004", "s00005"],
    ]
    assert [b.skipped for b in batches] == [2, 0, 0]


def test_stream_of_unusable_samples_fails(
    shards: list[Shard], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "MAX_BAD_STREAK", 5)
    features = PairCollator(FeatureCodec("float16", dim=8, num_tokens=4))
    with pytest.raises(RuntimeError, match="consecutive samples .* no feat member"):
        _run(ShardStream(shards, features, 4, "resampled", 3))


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_continues_the_same_batches(
    shards: list[Shard], collator: PairCollator, mode: str, num_workers: int
) -> None:
    stream = ShardStream(shards, collator, 4, mode, 5, shuffle_buffer=8)  # type: ignore[arg-type]

    def keys_per_batch(done: int) -> list[list[str]]:
        loader = EpochDataLoader(
            stream, epoch_of=lambda: 1, resume_batches_of=lambda: done, num_workers=num_workers
        )
        return [batch.keys for batch in loader]

    full = keys_per_batch(0)
    assert len(full) == 5
    for done in (1, 2, 3, 5):
        assert keys_per_batch(done) == full[done % 5 :]


PARALLELISM_CODES = {None: 0, "false": 1, "true": 2}


@dataclass(frozen=True)
class _ParallelismReporter(TextCodec):
    """The text codec, with the process's ``TOKENIZERS_PARALLELISM`` as every first token id."""

    def collate(self, items: Sequence[str]) -> dict[str, Tensor]:
        tokens = super().collate(items)
        code = PARALLELISM_CODES[os.environ.get("TOKENIZERS_PARALLELISM")]
        tokens["input_ids"][:, 0] = code
        return tokens


@pytest.mark.parametrize(("setting", "in_workers"), [(None, "false"), ("true", "true")])
def test_tokenizer_threads_are_off_in_workers_unless_set(
    shards: list[Shard], monkeypatch: pytest.MonkeyPatch, setting: str | None, in_workers: str
) -> None:
    # The workers are the parallelism; a user's own setting is kept.
    if setting is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", setting)
    text = _ParallelismReporter(AutoTokenizer.from_pretrained(TOKENIZER), 16)
    stream = ShardStream(shards, PairCollator(ImageCodec(16), text), 4, "epoch", 2)
    # spawn: the workers start from this process's environment as the test set it.
    loader = DataLoader(stream, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    codes = torch.cat([batch.caption_ids[:, 0] for batch in loader])
    assert codes.tolist() == [PARALLELISM_CODES[in_workers]] * 8
    assert os.environ.get("TOKENIZERS_PARALLELISM") == setting  # the main process is as it was
