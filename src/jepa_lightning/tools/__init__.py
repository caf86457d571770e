"""Offline data tools: shard writing, folder conversion, the shapes set, feature caches.

Each is also a ``jepa-lightning data`` command; training reads their output through
:mod:`jepa_lightning.data`. Exports are imported on first use, so that one tool does not
import what the others need.
"""

from typing import TYPE_CHECKING

from jepa_lightning._lazy import lazy_exports

if TYPE_CHECKING:
    from jepa_lightning.tools.convert import ConvertReport, convert_folder
    from jepa_lightning.tools.feature_cache import cache_features, write_feature_cache
    from jepa_lightning.tools.moving_shapes import (
        MovingShapesSpec,
        ensure_moving_shapes_shards,
        write_moving_shapes_shards,
    )
    from jepa_lightning.tools.shapes import ShapesSpec, ensure_shapes_shards, write_shapes_shards
    from jepa_lightning.tools.shards import ShardWriter

__all__ = [
    "ConvertReport",
    "MovingShapesSpec",
    "ShapesSpec",
    "ShardWriter",
    "cache_features",
    "convert_folder",
    "ensure_moving_shapes_shards",
    "ensure_shapes_shards",
    "write_feature_cache",
    "write_moving_shapes_shards",
    "write_shapes_shards",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "ConvertReport": "jepa_lightning.tools.convert",
        "convert_folder": "jepa_lightning.tools.convert",
        "cache_features": "jepa_lightning.tools.feature_cache",
        "write_feature_cache": "jepa_lightning.tools.feature_cache",
        "MovingShapesSpec": "jepa_lightning.tools.moving_shapes",
        "ensure_moving_shapes_shards": "jepa_lightning.tools.moving_shapes",
        "write_moving_shapes_shards": "jepa_lightning.tools.moving_shapes",
        "ShapesSpec": "jepa_lightning.tools.shapes",
        "ensure_shapes_shards": "jepa_lightning.tools.shapes",
        "write_shapes_shards": "jepa_lightning.tools.shapes",
        "ShardWriter": "jepa_lightning.tools.shards",
    },
)
