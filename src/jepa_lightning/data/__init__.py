"""Data: WebDataset streaming, the shapes generator, shard writing and conversion."""

from jepa_lightning.data.collate import PairCollator, SampleError, caption_id
from jepa_lightning.data.datamodule import ShapesDataModule, WebDataModule
from jepa_lightning.data.pipeline import ShardStream, resolve_shards

__all__ = [
    "PairCollator",
    "SampleError",
    "ShapesDataModule",
    "ShardStream",
    "WebDataModule",
    "caption_id",
    "resolve_shards",
]
