"""Receiving a data loader's batches from its workers in a background thread.

Taking a batch from a worker costs the main process a few milliseconds even when the batch
is ready: unpickling its shared-memory tensors asks the worker for their file descriptors
(multiprocessing's resource sharer), a round trip per tensor. :class:`BackgroundReceiver`
does that in a thread of its own, as torch's pin-memory thread does with ``pin_memory``, and
the training loop takes received batches from a queue.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

__all__ = ["BackgroundReceiver", "receives_in_background"]

T = TypeVar("T")

THREAD_NAME = "jepa-batch-receiver"
# How often a waiting thread looks at its stop event or at the other thread's liveness. The
# waits end sooner when their item arrives (or, in close(), when the queue is drained).
_POLL_SECONDS = 0.5
# How long closing an abandoned pass waits for a batch still in transfer before it leaves the
# workers to the inner iterator's own finaliser (see close()).
_JOIN_SECONDS = 5.0


class _End:
    """The inner iterator's StopIteration, as a queue item."""


_END = _End()


@dataclass
class _Failure:
    """An exception raised by the inner iterator, as a queue item."""

    error: BaseException


def receives_in_background(loader: DataLoader[Any], batches: Iterator[Any]) -> bool:
    """Whether the batches of this pass are worth and safe to receive in a thread.

    Worth it: they come from worker processes, and no pin-memory thread already receives
    them off the main thread. Safe: the workers do not start by ``fork``, which copies the
    parent's locks whatever its other threads hold (see
    :func:`~jepa_lightning.data.datamodule.worker_start_method`); the forkserver and spawn
    start a later pass's workers without them.

    Args:
        loader: The data loader.
        batches: What ``DataLoader.__iter__`` returned for this pass (its workers started).

    Returns:
        True for a multiprocessing iterator without pin-memory thread whose workers start by
        ``forkserver`` or ``spawn``.
    """
    if not isinstance(batches, _MultiProcessingDataLoaderIter) or batches._pin_memory:
        return False
    context = loader.multiprocessing_context
    # Without one of its own the loader used the default context, fixed by its workers' start.
    method = (
        context.get_start_method()
        if context is not None
        else multiprocessing.get_start_method(allow_none=True)
    )
    return method in ("forkserver", "spawn")


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Puts ``item`` once there is room; False if ``stop`` was set first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _receive(batches: Iterator[Any], out: queue.Queue[Any], stop: threading.Event) -> None:
    """The thread: moves batches from ``batches`` to ``out`` until the end, a failure or stop.

    Takes no reference to the :class:`BackgroundReceiver`, so that dropping the receiver
    finalises it (and closes the thread) while the thread runs.
    """
    while not stop.is_set():
        item: Any
        try:
            item = next(batches)
        except StopIteration:
            item = _END
        except BaseException as error:  # handed to the consumer, which raises it
            item = _Failure(error)
        if not _put(out, item, stop) or isinstance(item, _End | _Failure):
            return


class BackgroundReceiver(Generic[T]):
    """An iterator that takes the batches of another from a thread that receives them.

    The thread calls ``next()`` on ``batches`` and queues what it gets; once started, only
    it touches ``batches`` (until :meth:`close` has joined it). An exception raised by
    ``batches`` is raised by ``__next__``, the same object with its traceback (the thread's
    frames under the consumer's); the iteration ends there, as at ``StopIteration``.

    Close the receiver, or drop it, to stop the thread; it is closed at the end of the
    iteration. Closing does not interrupt a ``next()`` that waits for a worker; it waits for
    that batch (up to the loader's ``timeout``) when the caller needs ``batches`` back, as
    before reusing persistent workers.

    Args:
        batches: A data loader's iterator over worker batches (see
            :func:`receives_in_background`).
        shutdown: Shut the workers of ``batches`` down when closed: False for persistent
            workers, which the data loader reuses for its next pass.
    """

    def __init__(self, batches: Iterator[T], shutdown: bool = True) -> None:
        self._batches: Iterator[T] | None = batches
        self._shutdown = shutdown
        # Two: a batch ready for the next step and one behind it, so that a short step after
        # a long one still finds one ready. Reading ahead belongs to the workers
        # (prefetch_factor); every batch held here keeps its shared memory alive.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._finished = False
        thread = threading.Thread(
            target=_receive, args=(batches, self._queue, self._stop), name=THREAD_NAME, daemon=True
        )
        thread.start()
        self._thread = thread

    def __iter__(self) -> BackgroundReceiver[T]:
        return self

    def __next__(self) -> T:
        """The next batch, once the thread has received it.

        Returns:
            The batch.

        Raises:
            StopIteration: At the end of ``batches``, after a failure, or once closed.
            BaseException: What ``batches`` raised, as it was raised.
            RuntimeError: If the thread ended without saying why.
        """
        while not self._finished:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                try:  # it may have put its last item just before ending
                    item = self._queue.get_nowait()
                except queue.Empty:
                    self._finished = True
                    raise RuntimeError(
                        f"the {THREAD_NAME} thread ended without its loader's end or error"
                    ) from None
            if isinstance(item, _End):
                self.close()
                break
            if isinstance(item, _Failure):
                # The workers are left as they are, to close() or the finaliser, as torch
                # leaves its iterator's on an error.
                self._finished = True
                raise item.error
            return item
        raise StopIteration

    def close(self, timeout: float | None = _JOIN_SECONDS) -> None:
        """Stops the thread and, unless persistent, the workers.

        The thread ends once its ``next()`` on ``batches`` returns. If that takes longer than
        ``timeout``, the thread is left to end then, holding the last reference to
        ``batches``, whose finaliser shuts the workers down.

        Args:
            timeout: Seconds to wait for the thread; None waits until it ends (needed before
                anything else touches ``batches``).
        """
        self._finished = True
        self._stop.set()
        if self._thread is threading.current_thread():  # a finaliser run by the thread's GC
            return
        self._drain()  # wakes a thread blocked on a full queue
        self._thread.join(timeout)
        self._drain()  # what it put before it saw the stop
        batches, self._batches = self._batches, None
        if self._shutdown and not self._thread.is_alive():
            if isinstance(batches, _MultiProcessingDataLoaderIter):
                batches._shutdown_workers()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __del__(self) -> None:
        # At exit daemon threads are frozen: nothing to join. Without a thread, nothing started.
        if sys.is_finalizing() or not hasattr(self, "_thread"):
            return
        self.close()
