"""Streaming WebDataset shards into collated batches: planning, reading, skipping.

Three kinds of stream, all yielding exactly the same number of batches on every rank:

* ``resampled`` (training): each (rank, worker) draws shards with replacement from its own
  generator, seeded by (seed, epoch, rank, worker), and stops after its batch quota. Epochs
  are a length, not a pass over the data; suited to corpora too large for epochs.
* ``epoch`` (training): the shard order is shuffled per epoch (the same order on every rank).
  With shard sizes known (``index.json``), the shuffled sequence of samples is cut into one
  contiguous run of whole batches per (rank, worker): every sample is read once per epoch,
  except the remainder of less than ``world_size * batch_size`` samples, which changes with the
  shuffle. Without sizes, whole shards are dealt round-robin by rank, then by worker, and each
  worker cycles through its shards until its quota is met.
* ``eval``: no shuffling; the samples, in order, are cut into near-equal contiguous runs per
  rank (sizes differ by at most one), each split into the same number of near-equal batches
  of at most ``batch_size`` samples. Every readable sample is evaluated exactly once, at any
  batch size and number of ranks.

A sample that cannot be read or decoded is skipped, counted (``batch.skipped``) and logged
with its shard and key. In training the worker reads on (cycling its range in epoch mode) to
fill its quota; ``skipped`` counts the skips since the worker's previous batch. In evaluation
``skipped`` is exact: the samples the index lists for the batch that it does not hold
(unreadable, or missing from a shard cut short). A batch left with no readable sample of its
own (all of its samples bad, or a rank with fewer samples than the others) holds one filler
row instead, a copy of a readable sample marked invalid (``batch.valid``), which no loss,
metric or output counts: the ranks stay in step without evaluating any sample twice.
"""

from __future__ import annotations

import glob
import itertools
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from jepa_lightning.batch import Batch
from jepa_lightning.data.collate import PairCollator, SampleError
from jepa_lightning.data.index import INDEX_FILENAME, read_shard_index
from jepa_lightning.data.seeds import seed_from
from jepa_lightning.data.shard_reader import is_local_file, shard_samples

log = logging.getLogger(__name__)

ShardSource = str | list[str]
"""A folder (its ``index.json``, else ``*.tar``), a brace pattern, a ``pipe:`` URL, or a list."""

StreamMode = Literal["resampled", "epoch", "eval"]

MAX_BAD_STREAK = 1000
"""Consecutive unreadable samples (or empty shard reads) after which a stream gives up.

A streak this long means the data or the configuration is wrong (e.g. feature shards read as
images), not that a few files are corrupt; failing beats looping forever."""

_TRUNCATED = "__truncated__"


@dataclass(frozen=True)
class Shard:
    """One shard and, when an index lists it, its sample count.

    Attributes:
        url: Local path, URL or ``pipe:`` command.
        num_samples: Samples in the shard (from ``index.json``), or None when unknown.
        metadata: The ``metadata`` of the index that lists the shard (``{}`` without one).
    """

    url: str
    num_samples: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)


def resolve_shards(source: ShardSource, name: str = "shards") -> list[Shard]:
    """Expands a shard source into shards, with their sizes where an index gives them.

    Args:
        source: A folder (its ``index.json``, else every ``*.tar`` in it), a brace pattern
            (``shards-{0000..0099}.tar``), a ``pipe:`` command, a URL, or a list of these.
        name: The config key, named in errors.

    Returns:
        The shards, in order.

    Raises:
        FileNotFoundError: If a local shard or folder does not exist.
        ValueError: If the source, or a folder in it, names no shard.
    """
    items = [source] if isinstance(source, str) else list(source)
    shards: list[Shard] = []
    for item in items:
        if os.path.isdir(item):
            if os.path.isfile(os.path.join(item, INDEX_FILENAME)):
                index = read_shard_index(item)
                shards.extend(
                    Shard(url, count, index.metadata)
                    for url, (_, count) in zip(index.urls, index.shards, strict=True)
                )
                continue
            found = sorted(glob.glob(os.path.join(glob.escape(item), "*.tar")))
            if not found:
                raise ValueError(f"{name}: folder {item!r} has no {INDEX_FILENAME} and no *.tar")
            shards.extend(Shard(url) for url in found)
            continue
        urls = expand_urls(item)
        missing = [url for url in urls if is_local_file(url) and not os.path.isfile(url)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{name}: {len(missing)} of {len(urls)} shards of {item!r} do not exist: "
                f"{', '.join(missing[:3])}{more}"
            )
        shards.extend(Shard(url) for url in urls)
    if not shards:
        raise ValueError(f"{name}: {source!r} names no shard")
    return shards


def count_samples(url: str) -> int:
    """Counts the samples of a shard by reading it (for shards no index describes).

    Args:
        url: The shard.

    Returns:
        The number of samples the reader finds (up to the first read error).
    """
    return sum(1 for _ in shard_samples(url, handler=wds.ignore_and_continue))


@dataclass(frozen=True)
class ShardRange:
    """Samples ``[start, stop)`` of one shard, read as a run of a stream.

    Attributes:
        url: The shard.
        start: Index of the first sample to read.
        stop: Index after the last sample to read; None reads to the end.
        offset: Position of sample ``start`` in the run the range belongs to.
    """

    url: str
    start: int = 0
    stop: int | None = None
    offset: int = 0


def share(total: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous, near-equal shares of ``range(total)``.

    Args:
        total: Number of items.
        parts: Number of shares.
        part: Which share.

    Returns:
        ``(start, stop)``; share sizes differ by at most one.
    """
    return part * total // parts, (part + 1) * total // parts


def take_samples(shards: Sequence[Shard], start: int, count: int) -> list[ShardRange]:
    """Samples ``[start, start + count)`` of the endless repetition of ``shards``, as ranges.

    Args:
        shards: Shards whose ``num_samples`` are all known, in reading order.
        start: Position of the first sample (wraps around the total).
        count: Number of samples.

    Returns:
        The ranges, in order, with ``offset`` counting from 0 at ``start``.

    Raises:
        ValueError: If the shards hold no sample.
    """
    sizes = [int(shard.num_samples or 0) for shard in shards]
    total = sum(sizes)
    if total == 0:
        raise ValueError("the shards hold no sample")
    index, skip = 0, start % total
    while skip >= sizes[index]:
        skip -= sizes[index]
        index += 1
    ranges: list[ShardRange] = []
    taken = 0
    while taken < count:
        size = min(sizes[index] - skip, count - taken)
        if size > 0:
            ranges.append(ShardRange(shards[index].url, skip, skip + size, taken))
        taken += size
        skip, index = 0, (index + 1) % len(shards)
    return ranges


def eval_batches_per_rank(num_samples: int, world_size: int, batch_size: int) -> int:
    """The number of batches every rank yields in evaluation.

    Each rank gets ``num_samples // world_size`` or one more samples; the largest share is
    split into this many batches of at most ``batch_size``, and every other share into as
    many (a rank with fewer samples than batches fills the rest with filler batches).

    Args:
        num_samples: Samples in the evaluation set.
        world_size: Number of ranks.
        batch_size: Largest batch.

    Returns:
        The batch count, the same on every rank.

    Raises:
        ValueError: If the evaluation set holds no sample.
    """
    if num_samples == 0:
        raise ValueError("the evaluation shards hold no sample")
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)


class _Skips:
    """Counts skipped samples and stops a stream that reads nothing but bad data."""

    def __init__(self) -> None:
        self.count = 0
        self.streak = 0

    def skip(self, message: str) -> None:
        self.count += 1
        log.warning("skipping unreadable data: %s", message)
        self.bad(message)

    def bad(self, message: str) -> None:
        self.streak += 1
        if self.streak > MAX_BAD_STREAK:
            raise RuntimeError(
                f"{MAX_BAD_STREAK} consecutive samples or shard reads gave no usable sample "
                f"(last: {message}); check the shards and that they hold what the model reads"
            )

    def good(self) -> None:
        self.streak = 0

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def collated(batch: Any) -> Any:
    """The collate function of a loader over a :class:`ShardStream`: batches come collated.

    It lives here, beside the stream, so that a loader worker started by ``spawn`` or
    ``forkserver`` imports only this module's light dependencies, not Lightning.

    Args:
        batch: A batch of the stream.

    Returns:
        ``batch``.
    """
    return batch


class ShardStream(IterableDataset):
    """Shards → samples → decoded → batches, the same number of batches on every rank.

    See the module docstring for the three modes. ``len()`` is the number of batches per rank
    and epoch.

    Args:
        shards: The shards, in order.
        collator: Decodes samples and collates batches.
        batch_size: Samples per batch (the largest batch in ``eval`` mode).
        mode: ``"resampled"``, ``"epoch"`` or ``"eval"``.
        batches_per_rank: Batches each rank yields per epoch (training modes); ``eval``
            computes it from the shard sizes.
        rank: This process's rank.
        world_size: Number of ranks.
        shard_weights: Relative probability of drawing each shard (``resampled``); default
            uniform.
        shuffle_buffer: Size of the sample shuffle buffer (training modes).
        seed: Base seed; the epoch, rank and worker are mixed in.

    Raises:
        ValueError: If the arguments do not fit the mode (sizes unknown in ``eval`` mode, no
            batch count in a training mode, mismatched weights).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        collator: PairCollator,
        batch_size: int,
        mode: StreamMode = "eval",
        batches_per_rank: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shard_weights: Sequence[float] | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shards = list(shards)
        self.collator = collator
        self.batch_size = batch_size
        self.mode = mode
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self._iterations = 0
        self.cum_weights = None
        if shard_weights is not None:
            if len(shard_weights) != len(self.shards):
                raise ValueError("shard_weights needs one weight per shard")
            self.cum_weights = list(itertools.accumulate(shard_weights))
        self.sized = all(shard.num_samples is not None for shard in self.shards)
        if mode == "eval":
            if not self.sized:
                raise ValueError("eval streams need the size of every shard (count_samples)")
            total = sum(int(shard.num_samples or 0) for shard in self.shards)
            batches_per_rank = eval_batches_per_rank(total, world_size, batch_size)
        elif batches_per_rank is None or batches_per_rank < 1:
            raise ValueError(f"{mode} streams need batches_per_rank >= 1")
        self.batches_per_rank: int = batches_per_rank

    def __len__(self) -> int:
        return self.batches_per_rank

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch mixed into the shuffling seed (called before each epoch).

        Args:
            epoch: The trainer's current epoch.
        """
        self.epoch = epoch
        self._iterations = 0

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            # The workers are the parallelism: a fast tokenizer's own threads in a worker
            # would take CPU time from the training process on the same cores.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Persistent workers never see set_epoch: count their own passes.
        epoch = self.epoch + self._iterations
        self._iterations += 1
        if self.mode == "eval":
            return self._eval_batches(worker, workers)
        rng = random.Random(seed_from(self.seed, epoch, self.rank, worker))
        first, last = share(self.batches_per_rank, workers, worker)
        passes: Iterator[Iterable[ShardRange]]
        if self.mode == "resampled":
            passes = iter([self._resampled(rng)])  # one endless pass
        else:
            # Later passes only replace skipped samples.
            passes = itertools.repeat(self._epoch_ranges(epoch, worker, workers, first, last))
        return self._train_batches(passes, last - first, rng)

    def _resampled(self, rng: random.Random) -> Iterator[ShardRange]:
        while True:
            shard = rng.choices(self.shards, cum_weights=self.cum_weights)[0]
            yield ShardRange(shard.url)

    def _epoch_ranges(
        self, epoch: int, worker: int, workers: int, first: int, last: int
    ) -> list[ShardRange]:
        order = list(self.shards)
        random.Random(seed_from(self.seed, epoch)).shuffle(order)  # the same on every rank
        if not self.sized:
            mine = order[self.rank :: self.world_size][worker::workers]
            if not mine:
                raise ValueError(
                    f"rank {self.rank}, worker {worker} has no shard: {len(order)} shards for "
                    f"{self.world_size} ranks x {workers} workers"
                )
            return [ShardRange(shard.url) for shard in mine]
        start = (self.rank * self.batches_per_rank + first) * self.batch_size
        return take_samples(order, start, (last - first) * self.batch_size)

    def _read(self, shard: ShardRange, skips: _Skips) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yields (position in the run, raw sample) for the samples of one range.

        A read error (truncated tar, failed ``pipe:``) ends the shard and counts as one skip,
        for the reader whose range it falls in. A sample completed after the error is marked:
        if it is partial, its decoding error is the same skip and is not counted again.
        """
        failed = False
        read = 0

        def on_error(error: Exception) -> bool:
            nonlocal failed
            if not failed and read >= shard.start:
                skips.skip(f"shard {shard.url!r} unreadable after {read} samples: {error}")
            failed = True
            return True

        samples = shard_samples(shard.url, handler=on_error)
        for sample in itertools.islice(samples, shard.stop):
            if read >= shard.start:
                if failed:
                    sample[_TRUNCATED] = True
                yield shard.offset + read - shard.start, sample
            read += 1
        if read == 0 and not failed:
            skips.bad(f"shard {shard.url!r} holds no sample")

    def _decoded(
        self, samples: Iterator[tuple[int, dict[str, Any]]], skips: _Skips
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for position, sample in samples:
            try:
                decoded = self.collator.decode_sample(sample)
            except SampleError as error:
                if not sample.get(_TRUNCATED):
                    skips.skip(str(error))
                continue
            skips.good()
            yield position, decoded

    def _train_batches(
        self, passes: Iterator[Iterable[ShardRange]], quota: int, rng: random.Random
    ) -> Iterator[Batch]:
        if quota == 0:
            return
        skips = _Skips()

        def shuffled(ranges: Iterable[ShardRange]) -> Iterator[tuple[int, dict[str, Any]]]:
            samples = (sample for shard in ranges for sample in self._read(shard, skips))
            if self.shuffle_buffer <= 1:
                return samples
            initial = min(100, self.shuffle_buffer)
            return wds.filters.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)

        # The buffer drains at the end of each pass, so no sample repeats before all were read.
        samples = itertools.chain.from_iterable(shuffled(ranges) for ranges in passes)
        batch: list[dict[str, Any]] = []
        for _, sample in self._decoded(samples, skips):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self._collate(batch, skips.take())
                batch, quota = [], quota - 1
                if quota == 0:
                    return

    def _eval_batches(self, worker: int, workers: int) -> Iterator[Batch]:
        total = sum(int(shard.num_samples or 0) for shard in self.shards)
        rank_start, rank_stop = share(total, self.world_size, self.rank)
        size = rank_stop - rank_start
        first, last = share(self.batches_per_rank, workers, worker)
        if first == last:
            return
        # Batch j holds the rank's samples [bounds[j], bounds[j + 1]); may be empty.
        bounds = [j * size // self.batches_per_rank for j in range(first, last + 1)]
        start, planned = bounds[0], bounds[-1] - bounds[0]
        ranges = take_samples(self.shards, rank_start + start, planned) if planned else []
        skips = _Skips()
        readable = self._decoded(
            (sample for shard in ranges for sample in self._read(shard, skips)), skips
        )
        upcoming = next(readable, None)
        filler: dict[str, Any] | None = None
        for low, high in itertools.pairwise(bounds):
            batch: list[dict[str, Any]] = []
            while upcoming is not None and upcoming[0] < high - start:
                batch.append(upcoming[1])
                upcoming = next(readable, None)
            skipped = high - low - len(batch)  # listed in the index, not readable
            if batch:
                filler = batch[-1]
                yield self._collate(batch, skipped)
                continue
            if filler is None:
                filler = upcoming[1] if upcoming is not None else self._first_readable()
            filled = self._collate([filler], skipped)
            filled.valid = torch.zeros(1, dtype=torch.bool)
            yield filled

    def _first_readable(self) -> dict[str, Any]:
        """The first readable sample of the set: the filler of a worker with none of its own.

        Raises:
            RuntimeError: If no shard holds a readable sample.
        """
        for shard in self.shards:
            samples = shard_samples(shard.url, handler=wds.ignore_and_continue)
            for sample in samples:
                try:
                    return self.collator.decode_sample(sample)
                except SampleError:
                    continue
        raise RuntimeError(
            f"no readable evaluation sample in any of the {len(self.shards)} shards, "
            f"e.g. {self.shards[0].url!r}"
        )

    def _collate(self, samples: list[dict[str, Any]], skipped: int) -> Batch:
        return self.collator.collate(samples, skipped)
