"""2-process (gloo, CPU) check that the jepa_lightning metrics sync exactly under DDP.

Each rank updates with its own share of the data (unequal sizes, several updates, one empty
update, a mix of default and explicit pair ids); the synced ``compute()`` on every rank must
equal the single-process metric over all the data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spawn import run_on_ranks
from torch import Tensor

from jepa_lightning.metrics import Alignment, CrossModalRecall, Uniformity

WORLD_SIZE = 2
TIMEOUT_S = 180.0
N_ROWS = 67
# (start, stop, explicit ids?) per update, per rank: unequal row counts and chunk counts,
# an empty update on rank 1, default ids on both ranks (they must not collide).
PLAN: dict[int, list[tuple[int, int, bool]]] = {
    0: [(0, 10, False), (10, 35, True), (35, 40, False)],
    1: [(40, 60, True), (60, 60, False), (60, 67, False)],
}


def _data() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(N_ROWS, 8, generator=g, dtype=torch.float64)
    text = image + torch.randn(N_ROWS, 8, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 12, (N_ROWS,), generator=g)  # shared across ranks
    return image, text, ids


def _make_metrics() -> dict[str, CrossModalRecall | Alignment | Uniformity]:
    return {
        "recall": CrossModalRecall(top_k=(1, 3, 10), chunk_size=6),
        "alignment": Alignment(alpha=2),
        "uniformity": Uniformity(t=2, chunk_size=5),
        "uniformity_sub": Uniformity(t=2, max_samples=30, seed=3),
    }


def _run(ranks: list[int]) -> dict[str, object]:
    image, text, ids = _data()
    metrics = _make_metrics()
    for rank in ranks:
        for start, stop, explicit in PLAN[rank]:
            sl = slice(start, stop)
            metrics["recall"].update(image[sl], text[sl], ids[sl] if explicit else None)
            metrics["alignment"].update(image[sl], text[sl])
            metrics["uniformity"].update(image[sl])
            metrics["uniformity_sub"].update(image[sl])
    return {name: metric.compute() for name, metric in metrics.items()}


def _run_rank(rank: int) -> dict[str, object]:
    return _run([rank])


def _assert_same(actual: object, expected: object, name: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), name
        for key in expected:
            _assert_same(actual[key], expected[key], f"{name}[{key}]")
    else:
        assert isinstance(actual, Tensor) and isinstance(expected, Tensor)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_synced_compute_equals_single_process(tmp_path: Path) -> None:
    results_per_rank = run_on_ranks(_run_rank, tmp_path, WORLD_SIZE, TIMEOUT_S)

    expected = _run([0, 1])
    # sanity: the data is non-trivial and default ids of both ranks are in play
    recall = expected["recall"]
    assert isinstance(recall, dict) and 0.0 < recall["i2t/R@1"].item() < 1.0
    for rank, results in enumerate(results_per_rank):
        for name in expected:
            _assert_same(results[name], expected[name], f"rank{rank}/{name}")
