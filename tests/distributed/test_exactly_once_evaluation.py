"""2 DDP ranks (gloo, CPU) evaluate every good sample exactly once, at any batch size.

The shards are those of the acceptance runs: uneven sizes (3, 41, 17, 9), a corrupt JPEG, a
missing and an empty caption, a missing image, a shard cut inside its last member and one cut
in the middle (the index still lists what it lost). Each rank runs ``validate``, ``test``
and ``predict`` of a tiny VLJEPA with loader workers on (started by the data module's default
method) at validation batch sizes 1, 2 and the default, and records the keys of the rows it
evaluated. Across the ranks, each good key must appear once, no bad key, in equal batch
counts; the logged skip counts (summed over ranks) must equal the bad samples.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from data.shard_factory import (
    CORRUPT_IMAGE,
    EMPTY_CAPTION,
    NO_CAPTION,
    NO_IMAGE,
    TRUNCATED,
    write_shards,
)
from lightning.pytorch import Callback, LightningModule, Trainer
from spawn import run_on_ranks

from jepa_lightning.data import WebDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA

WORLD_SIZE = 2
SIZES = (3, 41, 17, 9)
BAD = {1: CORRUPT_IMAGE, 10: NO_CAPTION, 30: EMPTY_CAPTION, 50: NO_IMAGE}
BAD |= {60: TRUNCATED, 66: TRUNCATED}  # 60 is its shard's last; 67-69 are lost after 66
LOST = {*BAD, 67, 68, 69}
GOOD = [f"s{n:05d}" for n in range(sum(SIZES)) if n not in LOST]
UNCAPTIONED = [f"s{n:05d}" for n, kind in BAD.items() if kind == NO_CAPTION]
BATCH_SIZES = (1, 2, None)  # None: the data module's default (its batch_size, 64)


class KeyRecorder(Callback):
    """The keys of the rows each validation/test batch counted, and the batch count."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.batches = 0

    def _record(self, batch: Any) -> None:
        self.keys += batch.valid_rows().keys
        self.batches += 1

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._record(batch)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._record(batch)


def _evaluate(rank: int, folder: str) -> dict[str, Any]:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD_SIZE))
    torch.manual_seed(0)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )
    results: dict[str, Any] = {}
    for val_batch_size in BATCH_SIZES:
        data = WebDataModule(
            model.batch_collator(), val_shards=folder, val_batch_size=val_batch_size, num_workers=2
        )
        passes: dict[str, Any] = {}
        for stage in ("validate", "test", "predict"):
            recorder = KeyRecorder()
            trainer = Trainer(
                accelerator="cpu",
                devices=WORLD_SIZE,
                strategy="ddp",
                callbacks=[recorder],
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            if stage == "predict":
                outputs = trainer.predict(model, data)
                assert outputs is not None
                keys = [key for output in outputs for key in output["keys"]]  # type: ignore[index]
                passes[stage] = {
                    "keys": keys,
                    "batches": len(outputs),
                    "skipped": model.predict_skipped,
                }
                continue
            metrics = getattr(trainer, stage)(model, data)[0]
            prefix = "val" if stage == "validate" else "test"
            passes[stage] = {
                "keys": recorder.keys,
                "batches": recorder.batches,
                "skipped": metrics[f"{prefix}/skipped"],
                "recall": metrics[f"{prefix}/recall_mean"],
            }
        results[str(val_batch_size)] = passes
    return results


@pytest.mark.slow
def test_each_good_sample_once_at_every_batch_size(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    write_shards(folder, SIZES, bad=BAD)
    per_rank = run_on_ranks(
        functools.partial(_evaluate, folder=str(folder)), tmp_path, WORLD_SIZE, timeout_s=600
    )
    for batch_size in map(str, BATCH_SIZES):
        for stage in ("validate", "test", "predict"):
            where = f"batch size {batch_size}, {stage}"
            ranks = [result[batch_size][stage] for result in per_rank]
            keys = [key for result in ranks for key in result["keys"]]
            # predict also embeds images without a caption (their ŝ needs none).
            good = GOOD + (UNCAPTIONED if stage == "predict" else [])
            assert Counter(keys) == Counter(good), where  # each good key once, no bad key
            assert ranks[0]["batches"] == ranks[1]["batches"], where
            lost = len(LOST) - len(good) + len(GOOD)
            assert [result["skipped"] for result in ranks] == [lost] * WORLD_SIZE, where
        validate, test = per_rank[0][batch_size]["validate"], per_rank[0][batch_size]["test"]
        assert validate["recall"] == test["recall"]  # the same rows, whatever the stage
    expected_batches = {"1": 35, "2": 18, "None": 1}  # ceil(35 / batch size) on each rank
    assert {b: per_rank[0][b]["validate"]["batches"] for b in expected_batches} == expected_batches
