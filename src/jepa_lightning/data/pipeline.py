"""Streaming WebDataset shards into collated batches: shard order, shuffling, skipping."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from jepa_lightning.data.collate import PairCollator, SampleError
from jepa_lightning.data.shards import INDEX_FILENAME, read_shard_index

log = logging.getLogger(__name__)

ShardSource = str | list[str]
"""A folder (its ``index.json``, else ``*.tar``), a brace pattern, a ``pipe:`` URL, or a list."""


def resolve_shards(source: ShardSource, name: str = "shards") -> tuple[list[str], int | None]:
    """Expands a shard source into URLs and, when an index says so, the sample count.

    Args:
        source: A folder, a brace pattern (``shards-{0000..0099}.tar``), a
            ``pipe:`` command, a URL, or a list of any of these.
        name: The config key, named in errors.

    Returns:
        The shard URLs and the total number of samples (None when unknown).

    Raises:
        FileNotFoundError: If a local shard or folder does not exist.
        ValueError: If the source expands to no shard.
    """
    sources = [source] if isinstance(source, str) else list(source)
    urls: list[str] = []
    total: int | None = 0
    for item in sources:
        if os.path.isdir(item):
            if os.path.isfile(os.path.join(item, INDEX_FILENAME)):
                index = read_shard_index(item)
                urls.extend(index.urls)
                total = None if total is None else total + index.num_samples
            else:
                found = sorted(glob.glob(os.path.join(item, "*.tar")))
                if not found:
                    raise ValueError(f"{name}: folder {item!r} has no *.tar shards")
                urls.extend(found)
                total = None
            continue
        expanded = expand_urls(item)
        for url in expanded:
            if "://" not in url and not url.startswith("pipe:") and not os.path.isfile(url):
                raise FileNotFoundError(f"{name}: shard {url!r} does not exist")
        urls.extend(expanded)
        total = None
    if not urls:
        raise ValueError(f"{name}: {source!r} names no shard")
    return urls, total


def _seed(*parts: Any) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ShardStream(IterableDataset):
    """Shards → samples → decoded → batches, split over ranks and workers.

    Training streams are *resampled*: each (rank, worker) draws shards with
    replacement from its own seeded generator and yields exactly
    ``batches_per_worker`` full batches, so every rank yields the same number
    of batches whatever the shard sizes (no DDP hang). Evaluation streams read
    each shard once, in order, split by rank then by worker, no shuffling.

    A sample that cannot be decoded is skipped; each batch carries in
    ``skipped`` how many were skipped since the worker's previous batch, and a
    warning names the shard and key.

    Args:
        urls: Shard URLs.
        collator: Decodes samples and collates batches.
        batch_size: Samples per batch.
        batches_per_worker: Batches each worker yields per epoch (training);
            None reads every shard once (evaluation).
        shuffle_buffer: Size of the sample shuffle buffer (training).
        seed: Base seed; the epoch, rank and worker are mixed in.
    """

    def __init__(
        self,
        urls: Sequence[str],
        collator: PairCollator,
        batch_size: int,
        batches_per_worker: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.collator = collator
        self.batch_size = batch_size
        self.batches_per_worker = batches_per_worker
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch mixed into the shuffling seed (called before each epoch).

        Args:
            epoch: The trainer's current epoch.
        """
        self.epoch = epoch
        self._iterations = 0

    def _shard_urls(
        self, rng: random.Random, rank: int, world: int, worker: int, workers: int
    ) -> Iterator[dict[str, str]]:
        if self.batches_per_worker is not None:
            while True:
                yield {"url": rng.choice(self.urls)}
        else:
            for url in self.urls[rank::world][worker::workers]:
                yield {"url": url}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Persistent workers never see set_epoch: count their own passes.
        epoch = self.epoch + self._iterations
        self._iterations += 1
        rng = random.Random(_seed(self.seed, epoch, rank, worker))
        skipped = 0

        def skip_error(error: Exception) -> bool:
            nonlocal skipped
            skipped += 1
            log.warning("skipping unreadable data: %s", error)
            return True

        samples: Iterator[dict[str, Any]] = tarfile_samples(
            self._shard_urls(rng, rank, world, worker, workers), handler=skip_error
        )
        if self.batches_per_worker is not None and self.shuffle_buffer > 1:
            samples = _shuffle(samples, self.shuffle_buffer, min(100, self.shuffle_buffer), rng)
        batch: list[dict[str, Any]] = []
        produced = 0
        for sample in samples:
            try:
                batch.append(self.collator.decode_sample(sample))
            except SampleError as error:
                skip_error(error)
                continue
            if len(batch) == self.batch_size:
                yield self._collate(batch, skipped)
                skipped, batch, produced = 0, [], produced + 1
                if produced == self.batches_per_worker:
                    return
        if batch and self.batches_per_worker is None:
            yield self._collate(batch, skipped)

    def _collate(self, samples: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        batch = self.collator.collate(samples)
        batch["skipped"] = skipped
        return batch
