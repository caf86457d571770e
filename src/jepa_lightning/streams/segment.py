"""Segmenting a stream of embeddings where its meaning changes.

A stream is a ``(T, D)`` tensor of embeddings in time order (the frames or short windows of a
video). A segmentation is the sorted list of its segments' first indices, starting with 0:
``[0, 40, 95]`` splits a stream of 120 into ``[0, 40)``, ``[40, 95)`` and ``[95, 120)``.
Each segment is then decoded once, from its mean embedding (:func:`segment_means`).

Three ways to place the boundaries:

* :func:`detect_changes`: online; a new segment starts when an embedding's cosine distance
  from the running mean of the current segment exceeds a threshold (for ``patience``
  embeddings in a row, so that one odd frame does not cut);
* :func:`cluster_segments`: the VL-JEPA paper's temporally constrained agglomerative
  clustering; starting from one segment per embedding, the two *neighbouring* segments whose
  merge least increases the within-segment sum of squares (Ward's criterion) are merged until
  ``num_segments`` remain;
* :func:`uniform_segments`: the baseline, equal lengths whatever the content.

Embeddings are L2-normalised first everywhere: VL-JEPA compares them by cosine.
"""

from __future__ import annotations

import heapq

import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(stream: Tensor) -> Tensor:
    """The stream as float unit vectors.

    Raises:
        ValueError: If it is not a non-empty ``(T, D)`` tensor.
    """
    if stream.dim() != 2 or len(stream) == 0:
        raise ValueError(f"a stream must be a non-empty (T, D) tensor, got {tuple(stream.shape)}")
    return F.normalize(stream.double(), dim=-1)


def segment_bounds(starts: list[int], length: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` of each segment.

    Args:
        starts: The segmentation (sorted first indices, starting with 0).
        length: Length of the stream.

    Returns:
        One ``(start, end)`` per segment.

    Raises:
        ValueError: If ``starts`` is not a valid segmentation of a stream of ``length``.
    """
    if (
        not starts
        or starts[0] != 0
        or any(b <= a for a, b in zip(starts, starts[1:], strict=False))
    ):
        raise ValueError(f"a segmentation starts at 0 and increases strictly, got {starts}")
    if starts[-1] >= length:
        raise ValueError(f"segment start {starts[-1]} is past the stream's end ({length})")
    return list(zip(starts, [*starts[1:], length], strict=True))


def segment_means(stream: Tensor, starts: list[int]) -> Tensor:
    """The mean unit embedding of each segment (the embedding that is decoded).

    Args:
        stream: ``(T, D)`` embeddings.
        starts: The segmentation.

    Returns:
        ``(len(starts), D)`` means, in the stream's dtype.
    """
    unit = _unit(stream)
    means = [unit[start:end].mean(0) for start, end in segment_bounds(starts, len(stream))]
    return torch.stack(means).to(stream.dtype)


def uniform_segments(length: int, num_segments: int) -> list[int]:
    """Equal segments (lengths differ by at most one): decoding at a fixed rate.

    Args:
        length: Length of the stream.
        num_segments: Number of segments (decodes), at most ``length``.

    Returns:
        The segmentation.

    Raises:
        ValueError: If ``num_segments`` is not in ``[1, length]``.
    """
    if not 1 <= num_segments <= length:
        raise ValueError(f"num_segments must be in [1, {length}], got {num_segments}")
    return [index * length // num_segments for index in range(num_segments)]


def detect_changes(stream: Tensor, threshold: float, patience: int = 1) -> list[int]:
    """Online change detection: cut where the cosine distance to the segment's mean jumps.

    Embedding ``t`` is compared with the mean of the current segment's embeddings; when
    ``patience`` embeddings in a row are further than ``threshold`` (cosine distance,
    ``1 - cos``), a new segment starts at the first of them. Embeddings within the threshold
    join the segment's mean; the ones under test do not until they are resolved.

    Args:
        stream: ``(T, D)`` embeddings.
        threshold: Cosine distance that counts as a change, in ``(0, 2)``.
        patience: Consecutive far embeddings needed to cut (>= 1).

    Returns:
        The segmentation.

    Raises:
        ValueError: If ``threshold`` or ``patience`` is out of range.
    """
    if not 0 < threshold < 2:
        raise ValueError(f"threshold must be in (0, 2), got {threshold}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    unit = _unit(stream)
    starts = [0]
    total, count = unit[0].clone(), 1
    pending: list[int] = []  # far embeddings since the last near one
    for index in range(1, len(unit)):
        distance = 1 - float(F.cosine_similarity(unit[index], total / count, dim=0))
        if distance <= threshold:
            for held in [*pending, index]:
                total += unit[held]
            count += len(pending) + 1
            pending = []
            continue
        pending.append(index)
        if len(pending) == patience:
            starts.append(pending[0])
            total, count = unit[pending].sum(0), len(pending)
            pending = []
    return starts


def cluster_segments(stream: Tensor, num_segments: int) -> list[int]:
    """Temporally constrained agglomerative clustering (Ward's criterion) into segments.

    Every embedding starts as its own segment; repeatedly, of all pairs of *neighbouring*
    segments, the one whose merge least increases the total within-segment sum of squared
    distances to the segment mean (``n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2``) is merged,
    until ``num_segments`` remain. This is scikit-learn's Ward clustering with a chain
    connectivity, in ``O(T log T)``.

    Args:
        stream: ``(T, D)`` embeddings.
        num_segments: Number of segments to keep, in ``[1, T]``.

    Returns:
        The segmentation.

    Raises:
        ValueError: If ``num_segments`` is not in ``[1, T]``.
    """
    unit = _unit(stream)
    length = len(unit)
    if not 1 <= num_segments <= length:
        raise ValueError(f"num_segments must be in [1, {length}], got {num_segments}")
    sums = list(unit.unbind(0))
    counts = [1] * length
    after = list(range(1, length + 1))  # next segment's start (length: none)
    before = list(range(-1, length - 1))  # previous segment's start (-1: none)
    alive = [True] * length
    version = [0] * length

    def cost(left: int, right: int) -> float:
        n_l, n_r = counts[left], counts[right]
        gap = sums[left] / n_l - sums[right] / n_r
        return n_l * n_r / (n_l + n_r) * float(gap @ gap)

    # (cost, left start, left version, right version): stale entries are skipped.
    heap = [(cost(i, i + 1), i, 0, 0) for i in range(length - 1)]
    heapq.heapify(heap)
    remaining = length
    while remaining > num_segments:
        _, left, left_version, right_version = heapq.heappop(heap)
        right = after[left]
        if not alive[left] or version[left] != left_version or right >= length:
            continue
        if version[right] != right_version:
            continue
        sums[left] = sums[left] + sums[right]
        counts[left] += counts[right]
        alive[right] = False
        after[left] = after[right]
        if after[left] < length:
            before[after[left]] = left
        version[left] += 1
        remaining -= 1
        if before[left] >= 0:
            previous = before[left]
            heapq.heappush(heap, (cost(previous, left), previous, version[previous], version[left]))
        if after[left] < length:
            following = after[left]
            heapq.heappush(heap, (cost(left, following), left, version[left], version[following]))
    return [index for index in range(length) if alive[index]]
