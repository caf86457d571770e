"""A rank that never reaches a collective ends the run within the DDP strategy's timeout.

Two gloo ranks fit a tiny VLJEPA with ``DDPStrategy(timeout=5 s)``; rank 1 stops before its
first validation batch (as a rank whose loader worker is stuck would) and never reaches the
step's gathered-negative ``all_gather``. Rank 0 must fail about 5 s later with an error that
names itself, the collective and where it was called from; the run (both processes) ends.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import REPO, TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from data.shard_factory import write_shards
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, Strategy

from jepa_lightning.data import WebDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA

WORLD_SIZE = 2
TIMEOUT_S = 5.0
DEADLINE_S = 300.0  # the test's own limit (start-up on a shared CPU), far above the timeout


class StuckRank(Callback):
    """Rank 1 stops before its first validation batch and never returns (it is killed)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, *_: Any
    ) -> None:
        if trainer.global_rank == 1:
            Path(self.marker).write_text(str(time.time()))
            time.sleep(DEADLINE_S)


def _fit(rank: int, port: int, shards: str, marker: str) -> None:
    try:
        _fit_until_failure(rank, port, shards, marker)
    finally:  # when rank 0 failed; the parent only learns it after ending rank 1
        Path(f"{marker}.ended.{rank}").write_text(str(time.time()))


def _fit_until_failure(rank: int, port: int, shards: str, marker: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )
    data = WebDataModule(
        model.batch_collator(), train_shards=shards, val_shards=shards, batch_size=2, num_workers=0
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=DDPStrategy(timeout=timedelta(seconds=TIMEOUT_S)),
        max_steps=2,
        val_check_interval=1,  # validation after the first step
        num_sanity_val_steps=0,
        callbacks=[StuckRank(marker)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_stuck_rank_ends_the_run_within_the_timeout(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", (8, 8), image_size=32)
    marker = tmp_path / "stuck_since"
    args = (_free_port(), str(tmp_path / "shards"), str(marker))
    context = mp.spawn(_fit, args=args, nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + DEADLINE_S
    try:
        with pytest.raises(mp.ProcessRaisedException) as raised:
            while not context.join(timeout=0.5):  # raises when a rank fails
                if time.monotonic() > deadline:
                    pytest.fail(f"the run did not end within {DEADLINE_S:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    waited = float(Path(f"{marker}.ended.0").read_text()) - float(marker.read_text())
    assert TIMEOUT_S - 1 <= waited <= TIMEOUT_S + 30
    message = str(raised.value)
    # The first collective of a DDP validation step is DDP's own (its buffers' broadcast).
    assert (
        "rank 0 of 2 waited longer than the process group's timeout in a collective in " in message
    )
    assert "called from lightning/pytorch/strategies/strategy.py" in message
    assert "during validate (epoch 0, global step 1)" in message
    assert "trainer.strategy.init_args.timeout" in message
    assert not any(process.is_alive() for process in context.processes)


@pytest.mark.parametrize("config", ["trainer_ddp_bf16.yaml", "trainer_multinode.yaml"])
def test_ddp_configs_set_the_collective_timeout(config: str) -> None:
    section = yaml.safe_load((REPO / "configs" / config).read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(Strategy, "strategy")
    parsed = parser.parse_object({"strategy": section})
    assert parsed.strategy.init_args.timeout == timedelta(minutes=10)
