"""Running a function on 2 CPU processes (gloo) with a deadline, for the distributed tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, fn: Callable[[int], Any], world_size: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(fn(rank), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(
    fn: Callable[[int], Any], folder: Path, world_size: int = 2, timeout_s: float = 150.0
) -> list[Any]:
    """Runs ``fn(rank)`` in ``world_size`` gloo processes and returns each rank's result.

    A worker's exception is re-raised here; workers still running at the deadline are killed
    and the test fails, so a hang never stalls the suite.
    """
    context = mp.spawn(_worker, args=(fn, world_size, str(folder)), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
