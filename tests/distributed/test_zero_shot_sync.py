"""2-process (gloo, CPU) check that ZeroShotAccuracy syncs exactly: the synced metric over two
ranks' halves (unequal, one empty update, unlabelled rows) equals the single-process one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spawn import run_on_ranks
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


def _run_rank(rank: int) -> dict[str, Tensor]:
    return _run([rank])


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_synced_zero_shot_equals_single_process(tmp_path: Path) -> None:
    results = run_on_ranks(_run_rank, tmp_path, WORLD_SIZE, TIMEOUT_S)
    expected = _run([0, 1])
    assert 0.0 < expected["top1"].item() < 1.0
    assert expected["top1"].item() != _run([0])["top1"].item()  # the halves differ
    for rank, result in enumerate(results):
        assert set(result) == set(expected)
        for key in expected:
            torch.testing.assert_close(result[key], expected[key], msg=f"rank{rank}/{key}")
