"""2-process (gloo, CPU) check that ZeroShotAccuracy syncs exactly: the synced metric over two
ranks' halves (unequal, one empty update, unlabelled rows) equals the single-process one."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from jepa_lightning.metrics import ZeroShotAccuracy

WORLD_SIZE = 2
TIMEOUT_S = 180.0
N_ROWS = 61
SPLITS: dict[int, list[tuple[int, int]]] = {0: [(0, 20), (20, 37)], 1: [(37, 37), (37, 61)]}


def _data() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    classes = torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 7, (N_ROWS,), generator=g)
    labels[::5] = -1
    image = classes[labels.clamp_min(0)] + 1.5 * torch.randn(N_ROWS, 8, generator=g)
    return image, classes, labels


def _run(ranks: list[int]) -> dict[str, Tensor]:
    image, classes, labels = _data()
    metric = ZeroShotAccuracy(classes, top_k=(1, 3))
    for rank in ranks:
        for start, stop in SPLITS[rank]:
            metric.update(image[start:stop], labels[start:stop])
    return metric.compute()


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(_run([rank]), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_synced_zero_shot_equals_single_process(tmp_path: Path) -> None:
    ctx = mp.spawn(
        _worker, args=(str(tmp_path / "filestore"), str(tmp_path)), nprocs=WORLD_SIZE, join=False
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1.0):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for process in ctx.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed metric workers did not finish within {TIMEOUT_S} s")

    expected = _run([0, 1])
    assert 0.0 < expected["top1"].item() < 1.0
    assert expected["top1"].item() != _run([0])["top1"].item()  # the halves differ
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(result) == set(expected)
        for key in expected:
            torch.testing.assert_close(result[key], expected[key], msg=f"rank{rank}/{key}")
