"""Data: WebDataset streaming, the shapes generator, shard writing, conversion, feature cache."""

from jepa_lightning.data.collate import PairCollator, SampleError, caption_id
from jepa_lightning.data.datamodule import ShapesDataModule, WebDataModule
from jepa_lightning.data.feature_cache import encoder_fingerprint, write_feature_cache
from jepa_lightning.data.pipeline import Shard, ShardStream, resolve_shards

__all__ = [
    "PairCollator",
    "SampleError",
    "ShapesDataModule",
    "Shard",
    "ShardStream",
    "WebDataModule",
    "caption_id",
    "encoder_fingerprint",
    "resolve_shards",
    "write_feature_cache",
]
