from __future__ import annotations

import gc
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.combined_loader import _shutdown_workers_and_reset_iterator
from shard_factory import write_shards
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from jepa_lightning.batch import Batch
from jepa_lightning.data import PairCollator, ShardStream, WebDataModule, resolve_shards
from jepa_lightning.data import datamodule as datamodule_module
from jepa_lightning.data.datamodule import EpochDataLoader
from jepa_lightning.data.receiver import THREAD_NAME, BackgroundReceiver
from jepa_lightning.encoders.vision import ImageCodec


def _receiving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    yield
    gc.collect()
    assert _receiving_threads() == []


def _data(folder: Path, **kwargs: Any) -> WebDataModule:
    data = WebDataModule(
        PairCollator(ImageCodec(16)),
        train_shards=str(folder),
        val_shards=str(folder),
        batch_size=4,
        shuffle_buffer=8,
        **{"num_workers": 1, "multiprocessing_context": "forkserver", **kwargs},
    )
    progress = SimpleNamespace(current=SimpleNamespace(ready=0))  # a run's first epoch
    data.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0,
        world_size=1,
        current_epoch=0,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, (10, 14))
    return folder


def _failing(after: int) -> Iterator[int]:
    yield from range(after)
    raise ValueError("the stream broke")


def test_receiver_passes_batches_in_order_then_ends() -> None:
    receiver = BackgroundReceiver(iter(range(7)))
    assert list(receiver) == list(range(7))
    assert next(receiver, None) is None


def test_an_error_of_the_inner_iterator_reaches_the_consumer_with_its_traceback() -> None:
    receiver = BackgroundReceiver(_failing(2))
    assert [next(receiver), next(receiver)] == [0, 1]
    with pytest.raises(ValueError, match="the stream broke") as caught:
        next(receiver)
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names[-1] == "_failing"  # where it was raised, in the thread
    assert next(receiver, None) is None  # the iteration ends with the error


def test_closing_stops_a_thread_waiting_for_room() -> None:
    received: list[int] = []

    def endless() -> Iterator[int]:
        number = 0
        while True:
            received.append(number)
            yield number
            number += 1

    receiver = BackgroundReceiver(endless())
    assert next(receiver) == 0
    receiver.close()
    assert _receiving_threads() == []
    assert len(received) <= 5  # the bounded queue stopped it
    assert next(receiver, None) is None


def test_dropping_the_receiver_stops_its_thread() -> None:
    receiver = BackgroundReceiver(iter(range(100)))
    next(receiver)
    del receiver
    gc.collect()
    assert _receiving_threads() == []


def _wait_until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _values(batches: Iterator[Batch]) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    return [(b.keys, b.x.clone(), b.pair_ids.clone()) for b in batches]


def test_batches_are_the_same_with_and_without_the_thread(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(folder, samples_per_epoch=24)
    torch.manual_seed(0)
    batches = iter(data.train_dataloader())
    assert isinstance(batches, BackgroundReceiver)
    received = _values(batches)
    monkeypatch.setattr(datamodule_module, "receives_in_background", lambda *_: False)
    torch.manual_seed(0)
    batches = iter(data.train_dataloader())
    assert isinstance(batches, _MultiProcessingDataLoaderIter)
    direct = _values(batches)
    assert len(received) == len(direct) == 6
    for (keys, x, ids), (keys_direct, x_direct, ids_direct) in zip(received, direct, strict=True):
        assert keys == keys_direct
        assert torch.equal(x, x_direct) and torch.equal(ids, ids_direct)


def test_an_abandoned_pass_stops_its_thread_and_workers(folder: Path) -> None:
    batches = iter(_data(folder).val_dataloader())
    assert isinstance(batches, BackgroundReceiver)
    next(batches)
    # Held elsewhere too (as the traceback of an error raised by a step would hold it).
    workers_iterator = batches._batches
    assert isinstance(workers_iterator, _MultiProcessingDataLoaderIter)
    workers = list(workers_iterator._workers)
    assert all(w.is_alive() for w in workers) and len(_receiving_threads()) == 1
    del batches
    gc.collect()
    assert _receiving_threads() == []
    assert not any(w.is_alive() for w in workers)


def test_persistent_workers_serve_every_pass(folder: Path) -> None:
    loader = _data(folder, persistent_workers=True).val_dataloader()
    first = iter(loader)
    assert isinstance(first, BackgroundReceiver)
    next(first)  # abandoned: the next pass stops its thread, not the workers
    _wait_until(first._queue.full)  # its thread holds one more batch, waiting for room
    workers = list(loader._workers_iterator._workers)  # type: ignore[union-attr]
    for _ in range(2):
        assert [len(batch) for batch in loader] == [4] * 6
    assert _receiving_threads() == []
    assert all(w.is_alive() for w in workers)
    assert loader._workers_iterator._workers == workers  # type: ignore[union-attr]
    last = iter(loader)
    next(last)  # still referenced when Lightning's teardown shuts the workers down
    _shutdown_workers_and_reset_iterator(loader)
    assert _receiving_threads() == []
    assert not any(w.is_alive() for w in workers)
    assert next(first, None) is None and next(last, None) is None


@pytest.mark.parametrize(("method", "workers"), [("fork", 1), ("forkserver", 0)])
def test_no_thread_with_forked_workers_or_none(folder: Path, method: str, workers: int) -> None:
    data = _data(folder, multiprocessing_context=method, num_workers=workers)
    batches = iter(data.val_dataloader())
    assert not isinstance(batches, BackgroundReceiver)
    assert [len(batch) for batch in batches] == [4] * 6
    assert _receiving_threads() == []


def test_a_resumed_pass_drops_the_batches_already_trained_on(folder: Path) -> None:
    shards = resolve_shards(str(folder), "shards")
    stream = ShardStream(shards, PairCollator(ImageCodec(16)), 4, "epoch", 6, shuffle_buffer=8)

    def keys_per_batch(done: int) -> list[list[str]]:
        loader = EpochDataLoader(
            stream,
            epoch_of=lambda: 1,
            resume_batches_of=lambda: done,
            num_workers=1,
            multiprocessing_context="forkserver",
        )
        batches = iter(loader)
        assert isinstance(batches, BackgroundReceiver)
        return [batch.keys for batch in batches]

    full = keys_per_batch(0)
    assert len(full) == 6
    assert keys_per_batch(4) == full[4:]
