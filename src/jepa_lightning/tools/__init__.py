"""Offline data tools: shard writing, folder conversion, the shapes set, feature caches.

Each is also a ``jepa-lightning data`` command; training reads their output through
:mod:`jepa_lightning.data`.
"""

from jepa_lightning.tools.convert import ConvertReport, convert_folder
from jepa_lightning.tools.feature_cache import cache_features, write_feature_cache
from jepa_lightning.tools.shapes import ShapesSpec, ensure_shapes_shards, write_shapes_shards
from jepa_lightning.tools.shards import ShardWriter

__all__ = [
    "ConvertReport",
    "ShapesSpec",
    "ShardWriter",
    "cache_features",
    "convert_folder",
    "ensure_shapes_shards",
    "write_feature_cache",
    "write_shapes_shards",
]
