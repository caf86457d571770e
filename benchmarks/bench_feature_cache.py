"""Benchmark training epochs on cached X-encoder features against recomputing the encoder.

Two models, each trained for one epoch on the same shapes samples, once from the image shards
(the frozen X-encoder runs every step) and once from feature shards written by
:func:`~jepa_lightning.tools.feature_cache.write_feature_cache` (the X-encoder is skipped):

* ``default``: ``configs/shapes_tiny.yaml`` as it is (64x64 images, a 2-layer ViT, batch 128,
  one data loader worker).
* ``vit-l``: the same with a ViT-L/16-shaped random X-encoder at 224x224 (hidden 1024, 24
  layers, the paper's frozen-encoder regime, where the encoder is most of the compute), with a
  smaller batch so that it fits a CPU run.

The epoch time is measured from the start to the end of the training epoch (no validation),
the fastest of ``--repeats`` interleaved runs; the one-off time to write the cache (the
encoder over every image once) is reported beside it. Both models of a case are built
from the same seed, so their X-encoders are identical (as the cache's fingerprint checks).

Usage::

    python benchmarks/bench_feature_cache.py --out benchmarks/results/feature_cache.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from jepa_lightning.data import WebDataModule
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.feature_cache import write_feature_cache
from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards

REPO = Path(__file__).resolve().parents[1]
VIT_L = {
    "model_type": "vit",
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def build_model(section: dict[str, Any]) -> VLJEPA:
    seed_everything(0, verbose=False)
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": section})).model
    assert isinstance(model, VLJEPA)
    return model


def epoch_seconds(section: dict[str, Any], shards: str, batch_size: int, workers: int) -> float:
    model = build_model(section)
    data = WebDataModule(
        collator=model.batch_collator(),
        train_shards=shards,
        batch_size=batch_size,
        resampled=False,
        num_workers=workers,
    )
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, data)
    assert trainer.global_step == len(trainer.train_dataloader)  # type: ignore[arg-type]
    return timer.seconds


def run_case(
    name: str,
    section: dict[str, Any],
    image_size: int,
    samples: int,
    batch_size: int,
    workers: int,
    repeats: int,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp())
    images = str(root / "images")
    write_shapes_shards(
        images, samples, ShapesSpec(image_size=image_size), samples_per_shard=max(64, samples // 4)
    )
    encoder = build_model(section).model.x_encoder
    start = time.perf_counter()
    write_feature_cache(
        images,
        str(root / "features"),
        encoder,
        batch_size=batch_size,
        num_workers=workers,
        device="cpu",
        progress=False,
    )
    cache_seconds = time.perf_counter() - start
    recompute, cached = math.inf, math.inf
    for _ in range(repeats):  # interleaved; the fastest of each, robust to a busy machine
        recompute = min(recompute, epoch_seconds(section, images, batch_size, workers))
        cached = min(cached, epoch_seconds(section, str(root / "features"), batch_size, workers))
    return {
        "case": name,
        "samples": samples,
        "batch_size": batch_size,
        "epoch_s_recompute": recompute,
        "epoch_s_cached": cached,
        "speedup": recompute / cached,
        "cache_write_s": cache_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048, help="default case")
    parser.add_argument("--vitl-samples", type=int, default=24)
    parser.add_argument("--vitl-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "configs/shapes_tiny.yaml").read_text())
    section = config["model"]
    data_args = config["data"]["init_args"]
    vitl = copy.deepcopy(section)
    vitl["init_args"]["x_encoder"]["init_args"]["model"] = VIT_L
    rows = [
        run_case(
            "default",
            section,
            data_args["image_size"],
            args.samples,
            data_args["batch_size"],
            data_args["num_workers"],
            args.repeats,
        ),
        run_case("vit-l", vitl, 224, args.vitl_samples, args.vitl_batch_size, 1, args.repeats),
    ]
    header = (
        f"{'case':8} {'samples':>7} {'batch':>5} {'recompute s':>11} {'cached s':>9} "
        f"{'speedup':>7} {'cache write s':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['case']:8} {row['samples']:7} {row['batch_size']:5} "
            f"{row['epoch_s_recompute']:11.2f} {row['epoch_s_cached']:9.2f} "
            f"{row['speedup']:7.2f} {row['cache_write_s']:13.2f}"
        )
    result = {
        "benchmark": "feature_cache",
        "torch_threads": args.threads,
        "repeats": args.repeats,
        "machine": platform.platform(),
        "load_average": os.getloadavg(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
