"""The training read path: shard streams, collation, shard indexes and feature caches.

Writing data (shards, conversion, the shapes set, feature caches) is in
:mod:`jepa_lightning.tools`. Exports are imported on first use: the data modules import
Lightning, which the offline tools do not need.
"""

from typing import TYPE_CHECKING

from jepa_lightning._lazy import lazy_exports

if TYPE_CHECKING:
    from jepa_lightning.data.collate import PairCollator, SampleError, caption_id
    from jepa_lightning.data.datamodule import ShapesDataModule, WebDataModule
    from jepa_lightning.data.features import FeatureCodec, encoder_fingerprint
    from jepa_lightning.data.index import ShardIndex, read_shard_index
    from jepa_lightning.data.moving_shapes import MovingShapesDataModule
    from jepa_lightning.data.pipeline import Shard, ShardStream, resolve_shards
    from jepa_lightning.data.seeds import seed_from

__all__ = [
    "FeatureCodec",
    "MovingShapesDataModule",
    "PairCollator",
    "SampleError",
    "ShapesDataModule",
    "Shard",
    "ShardIndex",
    "ShardStream",
    "WebDataModule",
    "caption_id",
    "encoder_fingerprint",
    "read_shard_index",
    "resolve_shards",
    "seed_from",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "PairCollator": "jepa_lightning.data.collate",
        "SampleError": "jepa_lightning.data.collate",
        "caption_id": "jepa_lightning.data.collate",
        "ShapesDataModule": "jepa_lightning.data.datamodule",
        "WebDataModule": "jepa_lightning.data.datamodule",
        "FeatureCodec": "jepa_lightning.data.features",
        "encoder_fingerprint": "jepa_lightning.data.features",
        "ShardIndex": "jepa_lightning.data.index",
        "read_shard_index": "jepa_lightning.data.index",
        "MovingShapesDataModule": "jepa_lightning.data.moving_shapes",
        "Shard": "jepa_lightning.data.pipeline",
        "ShardStream": "jepa_lightning.data.pipeline",
        "resolve_shards": "jepa_lightning.data.pipeline",
        "seed_from": "jepa_lightning.data.seeds",
    },
)
