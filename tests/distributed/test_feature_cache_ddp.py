"""Two DDP ranks (gloo, CPU) train on the feature cache that ``data.feature_cache`` writes.

Lightning calls ``prepare_data`` on each node's local rank 0 while the other ranks wait at a
barrier, so the cache is written once, before any rank reads it; then every rank draws its
training batches from the cache (equal counts) and validates on the images. The parent polls
the children with a deadline (see ``spawn.py``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER, tiny_shapes_data
from lightning.pytorch import Callback, LightningModule, Trainer
from spawn import run_on_ranks

from jepa_lightning.batch import Batch
from jepa_lightning.data.index import read_shard_index
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA

STEPS = 3


class RecordBatches(Callback):
    """Whether each training and validation batch held cached tokens, and the cache's index."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.cached: dict[str, list[bool]] = {"train": [], "val": []}
        self.index_written_at: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.index_written_at = (self.cache / "index.json").stat().st_mtime_ns

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *args: Any
    ) -> None:
        self.cached["train"].append(batch.cached)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *args: Any
    ) -> None:
        self.cached["val"].append(batch.cached)


def _fit(rank: int, shapes_root: str, folder: str) -> dict[str, Any]:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2")
    torch.manual_seed(0)  # the same random X-encoder on both ranks, as a seeded run builds
    model = VLJEPA(
        VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )
    cache = Path(folder) / "train-features"
    batches = RecordBatches(cache)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        limit_val_batches=1,
        val_check_interval=STEPS,
        callbacks=[batches],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(model, tiny_shapes_data(Path(shapes_root), model, feature_cache=str(cache)))
    return {"cached": batches.cached, "index_written_at": batches.index_written_at}


@pytest.mark.slow
def test_ranks_train_on_one_cache_written_before_them(shapes_root: Path, tmp_path: Path) -> None:
    first, second = run_on_ranks(
        functools.partial(_fit, shapes_root=str(shapes_root), folder=str(tmp_path)),
        tmp_path,
        world_size=2,
        timeout_s=240,
    )
    for rank in (first, second):
        assert rank["cached"]["train"] == [True] * STEPS
        assert rank["cached"]["val"] and not any(rank["cached"]["val"])  # sanity check + 1
    # Written once, before training, and not again (the index is the cache's last file).
    written_at = (tmp_path / "train-features" / "index.json").stat().st_mtime_ns
    assert first["index_written_at"] == second["index_written_at"] == written_at
    assert read_shard_index(tmp_path / "train-features").num_samples == 256
