"""The training read path: shard streams, collation, shard indexes and feature caches.

Writing data (shards, conversion, the shapes set, feature caches) is in
:mod:`jepa_lightning.tools`.
"""

from jepa_lightning.data.collate import PairCollator, SampleError, caption_id
from jepa_lightning.data.datamodule import ShapesDataModule, WebDataModule
from jepa_lightning.data.features import FeatureCodec, encoder_fingerprint
from jepa_lightning.data.index import ShardIndex, read_shard_index
from jepa_lightning.data.pipeline import Shard, ShardStream, resolve_shards
from jepa_lightning.data.seeds import seed_from

__all__ = [
    "FeatureCodec",
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
