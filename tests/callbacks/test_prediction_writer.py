"""`predict` with the EmbeddingWriter: one row per sample, also under 2 DDP processes and for
samples without a caption."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from lightning.pytorch import Trainer
from PIL import Image

from jepa_lightning.callbacks.prediction_writer import EmbeddingWriter
from jepa_lightning.data import WebDataModule
from jepa_lightning.embedding_table import load_table
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.shards import ShardWriter, encode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from spawn import run_on_ranks  # noqa: E402 (the helper of tests/distributed)

SIZES = (7, 6)  # 13 samples: 7 on one rank, 6 on the other
UNCAPTIONED = {2, 9}


def write_sources(folder: Path) -> list[str]:
    with ShardWriter(folder, "part", samples_per_shard=SIZES[0]) as writer:
        for number in range(sum(SIZES)):
            colour = (number * 37 % 256, number * 11 % 256, 90)
            image = encode_jpeg(Image.new("RGB", (32, 32), colour))
            sample = {"__key__": f"s{number:02d}", "jpg": image}
            if number not in UNCAPTIONED:
                sample["txt"] = f"sample {number}"
            writer.write(sample)
    return [str(folder)]


def model() -> VLJEPA:
    torch.manual_seed(0)
    return VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )


def predict(shards: list[str], output: str, devices: int, root: str) -> None:
    network = model()
    data = WebDataModule(
        collator=network.batch_collator(), val_shards=shards, batch_size=4, num_workers=0
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[EmbeddingWriter(output)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.predict(network, data, return_predictions=False)


def check(output: Path) -> None:
    records, arrays = load_table(output)
    keys = [record["key"] for record in records]
    assert sorted(keys) == [f"s{n:02d}" for n in range(sum(SIZES))]  # each sample exactly once
    network = model().eval()
    for row, record in enumerate(records):
        number = int(record["key"][1:])
        caption = arrays["text_embeddings"][row]
        if number in UNCAPTIONED:
            assert record["caption"] is None and np.isnan(caption).all()
        else:
            assert record["caption"] == f"sample {number}"
            with torch.no_grad():
                expected = network.model.embed_texts([record["caption"]])[0]
            np.testing.assert_allclose(caption, expected.numpy(), atol=1e-5)
    norms = np.linalg.norm(arrays["image_embeddings"], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert sorted(p.name for p in output.iterdir()) == [
        "image_embeddings.npy",
        "samples.jsonl",
        "text_embeddings.npy",
    ]


def test_one_process_writes_every_sample_with_or_without_caption(tmp_path) -> None:
    shards = write_sources(tmp_path / "shards")
    predict(shards, str(tmp_path / "out"), 1, str(tmp_path))
    check(tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds embeddings"):
        predict(shards, str(tmp_path / "out"), 1, str(tmp_path))


def _rank(rank: int, shards: list[str], output: str, root: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2")
    predict(shards, output, 2, root)


@pytest.mark.slow
def test_two_processes_write_every_sample_once(tmp_path) -> None:
    shards = write_sources(tmp_path / "shards")
    output = str(tmp_path / "out")
    worker = functools.partial(_rank, shards=shards, output=output, root=str(tmp_path))
    run_on_ranks(worker, tmp_path, timeout_s=300)
    check(Path(output))
