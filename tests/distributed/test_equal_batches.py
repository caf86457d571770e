"""Two DDP ranks (gloo, CPU) over shards of 7, 50 and 13 samples run the same number of steps.

Each rank fits a tiny VLJEPA with Lightning's DDP strategy (InfoNCE gathers negatives from both
ranks every step, so a rank with fewer batches would leave the other waiting forever), first
in epoch mode for two epochs, then resampled for one, with validation, and records its batch
counts.
The parent polls the children with a deadline and kills them if they hang.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from jepa_lightning.data import WebDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.shards import ShardWriter

WORLD_SIZE = 2
TIMEOUT_S = 300.0  # generous: the CPUs may be shared; a hang never ends
SIZES = (7, 50, 13)
BATCH_SIZE = 4
VAL_BATCH_SIZE = 8


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {"train": [], "val": []}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counts["train"].append(0)

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.counts["train"][-1] += 1

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counts["val"].append(0)

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.counts["val"][-1] += 1


def _fit(
    sources: list[str], resampled: bool, workers: int, epochs: int, root: str
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        warmup_steps=2,
    )
    data = WebDataModule(
        collator=model.batch_collator(),
        train_shards=sources,
        val_shards=sources,
        batch_size=BATCH_SIZE,
        val_batch_size=VAL_BATCH_SIZE,
        resampled=resampled,
        num_workers=workers,
        shuffle_buffer=8,
    )
    counter = BatchCounter()
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        # VLJEPA leaves some parameters unused (BERT pooler, query projection without queries).
        strategy="ddp",
        max_epochs=epochs,
        num_sanity_val_steps=0,
        callbacks=[counter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, data)
    return {**counter.counts, "steps": trainer.global_step}


def _worker(rank: int, store: str, sources: list[str], out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD_SIZE))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=120),
    )
    try:
        results = {
            "epoch": _fit(sources, resampled=False, workers=1, epochs=2, root=out_dir),
            "resampled": _fit(sources, resampled=True, workers=2, epochs=1, root=out_dir),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _write_sources(root: Path) -> list[str]:
    sources, number = [], 0
    for position, size in enumerate(SIZES):
        folder = root / f"source{position}"
        with ShardWriter(folder, "train", samples_per_shard=size) as writer:
            for _ in range(size):
                colour = (number * 37 % 256, number * 11 % 256, 90)
                writer.write_sample(
                    f"s{number:03d}", Image.new("RGB", (32, 32), colour), f"sample {number}"
                )
                number += 1
        sources.append(str(folder))
    return sources


def test_uneven_shards_give_equal_batches_on_both_ranks(tmp_path: Path) -> None:
    sources = _write_sources(tmp_path)
    start = time.monotonic()
    ctx = mp.spawn(
        _worker,
        args=(str(tmp_path / "filestore"), sources, str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=False,
    )
    while not ctx.join(timeout=1.0):  # re-raises a worker's exception
        if time.monotonic() - start > TIMEOUT_S:
            for process in ctx.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"DDP ranks did not finish within {TIMEOUT_S} s (a rank hangs)")

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert results[0] == results[1]
    per_rank = sum(SIZES) // (WORLD_SIZE * BATCH_SIZE)  # 8
    val_per_rank = -(-sum(SIZES) // WORLD_SIZE // VAL_BATCH_SIZE)  # 35 samples: 5 batches
    for mode, epochs in (("epoch", 2), ("resampled", 1)):
        assert results[0][mode] == {
            "train": [per_rank] * epochs,
            "val": [val_per_rank] * epochs,
            "steps": epochs * per_rank,
        }, mode
