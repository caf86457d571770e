"""Selective decoding: segment a stream of embeddings where its meaning changes, decode once each.

:mod:`~jepa_lightning.streams.segment` places the boundaries (a cosine change detector, the
paper's temporally constrained agglomerative clustering, or uniform segments);
:mod:`~jepa_lightning.streams.evaluate` scores captions over time against the number of
decodes on generated shape streams (``jepa-lightning decode-streams``).
"""

from jepa_lightning.streams.segment import (
    cluster_segments,
    detect_changes,
    segment_bounds,
    segment_means,
    uniform_segments,
)

__all__ = [
    "cluster_segments",
    "detect_changes",
    "segment_bounds",
    "segment_means",
    "uniform_segments",
]
