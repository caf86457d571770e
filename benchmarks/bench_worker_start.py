"""Data loader worker start-up: fork against forkserver (the data module's default) and spawn.

The time is from ``iter(loader)`` to the first batch of ``WebDataModule``'s validation loader
over small shapes shards, with the collator of the default model (``configs/shapes_tiny.yaml``:
64x64 images, the bundled BERT tokenizer). Each start method runs in a fresh process that has
imported what a training run imports (torch, Lightning, transformers, the package), so:

* the first pass includes what a method pays once per process (``forkserver``: starting the
  server, which imports the data path and the codecs' modules once);
* later passes (median and spread of ``--repeats``) are what every epoch and every
  validation pass pays with non-persistent workers.

``fork`` is the fastest, and the one that can deadlock a worker forked from a process that
already runs threads, as a DDP rank does. Usage::

    python benchmarks/bench_worker_start.py
    python benchmarks/bench_worker_start.py --smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, cast

import common

if TYPE_CHECKING:
    from jepa_lightning.data.datamodule import StartMethod

METHODS = ("fork", "forkserver", "spawn")


def measure(
    method: StartMethod, workers: int, passes: int, shards: str, threads: int
) -> dict[str, Any]:
    """First-batch latency of ``passes`` passes of one loader, in this process."""
    import torch
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    from jepa_lightning.data import WebDataModule

    torch.set_num_threads(threads)
    config = yaml.safe_load((common.REPO / "configs" / "shapes_tiny.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": config["model"]})).model
    data = WebDataModule(
        model.batch_collator(),
        val_shards=shards,
        batch_size=32,
        num_workers=workers,
        multiprocessing_context=method,
    )
    seconds = []
    for _ in range(passes):
        loader = data.val_dataloader()
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        seconds.append(time.perf_counter() - start)
        del batches  # its workers stop before the next pass starts new ones
    return {"method": method, "workers": workers, "first_s": seconds[0], "later_s": seconds[1:]}


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=5)
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        method, workers, passes, shards = args.measure
        print(
            json.dumps(
                measure(
                    cast("StartMethod", method), int(workers), int(passes), shards, args.threads
                )
            )
        )
        return
    common.setup(args)
    from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards

    repeats = 1 if args.smoke else args.repeats
    worker_counts = (1,) if args.smoke else (1, 2)
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        write_shapes_shards(tmp, 128, ShapesSpec(image_size=64), samples_per_shard=64, seed=0)
        for workers in worker_counts:
            for method in METHODS:
                print(f"  {method}, {workers} worker(s)", flush=True)
                command = [sys.executable, __file__, "--measure", method, str(workers)]
                command += [str(repeats + 1), tmp, "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                measured.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = ["method", "workers", "first pass", "later passes (median)", "spread"]
    rows, headlines = [], []
    for row in measured:
        later = common.stats([1e3 * s for s in row["later_s"]])
        row["later_ms"] = later
        rows.append(
            [
                row["method"],
                str(row["workers"]),
                common.ms(1e3 * row["first_s"]),
                common.ms(later["median"]),
                f"{later['spread']:.0%}",
            ]
        )
        if row["workers"] == 1:
            headlines.append(
                common.headline(
                    f"worker start, {row['method']}, later passes (s)", later["median"] / 1e3
                )
            )
            headlines.append(
                common.headline(f"worker start, {row['method']}, first pass (s)", row["first_s"])
            )
    common.write_result(
        args,
        "worker_start",
        "Loader worker start-up: fork vs forkserver (default) vs spawn, first and later passes",
        header,
        rows,
        headlines,
        {"passes": measured},
    )


if __name__ == "__main__":
    main()
