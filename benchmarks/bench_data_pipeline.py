"""Benchmark the WebDataModule's training stream against a bare tarfile + PIL loop.

Both read the same shards of 224x224 JPEG images with captions, one full pass each:

* ``bare``: ``tarfile`` iterates the members, PIL decodes each image to RGB, NumPy/torch turn
  it into a ``uint8`` tensor, the caption is decoded; tensors are stacked per batch. This is
  the least work any loader must do.
* ``datamodule``: ``WebDataModule.train_dataloader()`` in epoch mode (shard shuffle, a 1000
  sample shuffle buffer, skip accounting) with the collator a VL-JEPA model gives it
  (``ImageCodec(224)``: decode, resize/crop when needed, and the BERT tokenizer on captions).

"Per worker": the DataModule runs with ``num_workers=0`` (in the main process, like the bare
loop) and with 1 worker process. Runs are interleaved and the median is reported.

Usage::

    python benchmarks/bench_data_pipeline.py --out benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from jepa_lightning.assets import resolve_tokenizer
from jepa_lightning.data import WebDataModule
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.index import read_shard_index
from jepa_lightning.encoders.text import TextCodec
from jepa_lightning.encoders.vision import ImageCodec
from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 224
BATCH_SIZE = 64


def bare_loop(urls: list[str]) -> int:
    samples = 0
    images: list[torch.Tensor] = []
    for url in urls:
        with tarfile.open(url) as archive:
            for member in archive:
                data = archive.extractfile(member)
                if data is None:
                    continue
                if member.name.endswith(".jpg"):
                    with Image.open(io.BytesIO(data.read())) as image:
                        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
                    images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
                    samples += 1
                elif member.name.endswith(".txt"):
                    data.read().decode("utf-8")
                if len(images) == BATCH_SIZE:
                    torch.stack(images)
                    images = []
    return samples


def datamodule_loop(folder: str, workers: int) -> int:
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer("jepa_lightning:bert-base-uncased"))
    collator = PairCollator(ImageCodec(IMAGE_SIZE), TextCodec(tokenizer, 32))
    # No trainer: one rank, epoch 0, nothing to resume.
    data = WebDataModule(
        collator=collator,
        train_shards=folder,
        batch_size=BATCH_SIZE,
        resampled=False,
        num_workers=workers,
    )
    return sum(len(batch) for batch in data.train_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = str(Path(tempfile.mkdtemp()) / "shards")
    write_shapes_shards(
        folder, args.samples, ShapesSpec(image_size=IMAGE_SIZE), samples_per_shard=256
    )
    urls = read_shard_index(folder).urls
    runs = {
        "bare tarfile + PIL": lambda: bare_loop(urls),
        "WebDataModule, num_workers=0": lambda: datamodule_loop(folder, 0),
        "WebDataModule, num_workers=1": lambda: datamodule_loop(folder, 1),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts: dict[str, int] = {}
    for name, run in runs.items():  # warm-up (file cache, imports)
        counts[name] = run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    rates = {name: counts[name] / statistics.median(times[name]) for name in runs}
    bare = rates["bare tarfile + PIL"]
    rows = []
    header = f"{'loader':32} {'samples/s':>10} {'vs bare':>8}"
    print(header)
    print("-" * len(header))
    for name, rate in rates.items():
        rows.append({"loader": name, "samples_per_s": rate, "ratio_vs_bare": rate / bare})
        print(f"{name:32} {rate:10.0f} {rate / bare:8.2f}")
    result = {
        "benchmark": "data_pipeline",
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH_SIZE,
        "samples": args.samples,
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "machine": platform.platform(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
