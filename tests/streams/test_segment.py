"""Segmenting embedding streams: exact boundaries on synthetic streams, Ward as scikit-learn's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jepa_lightning.streams.segment import (
    cluster_segments,
    detect_changes,
    segment_bounds,
    segment_means,
    uniform_segments,
)

CHANGES = [0, 17, 30, 64, 71, 100]  # scene starts of a 130-step stream, some scenes short
LENGTH = 130


def synthetic_stream(noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Piecewise-constant random directions (one per scene) plus noise, unit norm."""
    generator = torch.Generator().manual_seed(seed)
    scenes = F.normalize(torch.randn(len(CHANGES), 32, generator=generator), dim=-1)
    rows = []
    for (start, end), scene in zip(segment_bounds(CHANGES, LENGTH), scenes, strict=True):
        jitter = noise * torch.randn(end - start, 32, generator=generator) / 32**0.5
        rows.append(scene + jitter)
    return F.normalize(torch.cat(rows), dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_change_detector_finds_the_exact_boundaries(seed) -> None:
    assert detect_changes(synthetic_stream(seed=seed), threshold=0.3) == CHANGES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustering_into_the_true_count_finds_the_exact_boundaries(seed) -> None:
    assert cluster_segments(synthetic_stream(seed=seed), len(CHANGES)) == CHANGES


def test_patience_ignores_a_lone_odd_embedding() -> None:
    stream = synthetic_stream()
    stream[40] = -stream[40]  # one frame far from everything
    assert detect_changes(stream, threshold=0.3, patience=1) == [0, 17, 30, 40, 41, 64, 71, 100]
    assert detect_changes(stream, threshold=0.3, patience=2) == CHANGES


def test_clustering_is_scikit_learns_ward_with_a_chain_connectivity() -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    sparse = pytest.importorskip("scipy.sparse")
    generator = torch.Generator().manual_seed(3)
    stream = F.normalize(torch.randn(150, 6, generator=generator).double(), dim=-1)
    chain = sparse.diags([1.0, 1.0], [-1, 1], shape=(150, 150))
    for count in (1, 2, 9, 40, 149, 150):
        labels = (
            cluster.AgglomerativeClustering(n_clusters=count, connectivity=chain, linkage="ward")
            .fit(stream.numpy())
            .labels_
        )
        expected = [0] + [i for i in range(1, 150) if labels[i] != labels[i - 1]]
        assert cluster_segments(stream, count) == expected


def test_uniform_segments_and_means() -> None:
    assert uniform_segments(10, 3) == [0, 3, 6]
    assert uniform_segments(10, 10) == list(range(10))
    stream = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    means = segment_means(stream, [0, 2])
    torch.testing.assert_close(means, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # of unit rows


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: uniform_segments(5, 6), "num_segments must be in"),
        (lambda: cluster_segments(torch.randn(5, 2), 0), "num_segments must be in"),
        (lambda: detect_changes(torch.randn(5, 2), 0.0), "threshold"),
        (lambda: detect_changes(torch.randn(5, 2), 0.3, patience=0), "patience"),
        (lambda: detect_changes(torch.randn(5), 0.3), "non-empty"),
        (lambda: segment_bounds([1, 3], 5), "starts at 0"),
        (lambda: segment_bounds([0, 5], 5), "past the stream's end"),
    ],
)
def test_bad_arguments_are_refused(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
