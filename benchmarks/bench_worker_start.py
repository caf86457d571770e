"""Benchmark how long data loader workers take to start: fork, forkserver and spawn.

The time is from ``iter(loader)`` to the first batch of the ``WebDataModule``'s validation
loader over small shapes shards, with the collator of the default model
(``configs/shapes_tiny.yaml``: 64x64 images, the bundled BERT tokenizer). Each start method
runs in a fresh process that has imported what a training run imports (torch, Lightning,
transformers, the package), so that:

* the first pass includes what a method pays once per process (``forkserver``: starting the
  server, which imports the package and the codecs' modules once);
* later passes (median) are what every epoch and every validation pass pays with
  non-persistent workers.

``forkserver`` is the data module's default; ``fork`` is the fastest and the one that can
deadlock a worker forked from a process that runs threads. Usage::

    python benchmarks/bench_worker_start.py --out benchmarks/results/worker_start.json
    python benchmarks/bench_worker_start.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METHODS = ("fork", "forkserver", "spawn")


def measure(method: str, workers: int, passes: int, shards: str) -> dict[str, Any]:
    """First-batch latency of ``passes`` passes of one loader (in this process)."""
    import torch
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    from jepa_lightning.data import WebDataModule

    torch.set_num_threads(1)
    section = yaml.safe_load((REPO / "configs" / "shapes_tiny.yaml").read_text())["model"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": section})).model
    data = WebDataModule(
        model.batch_collator(),
        val_shards=shards,
        batch_size=32,
        num_workers=workers,
        multiprocessing_context=method,  # type: ignore[arg-type]
    )
    seconds = []
    for _ in range(passes):
        loader = data.val_dataloader()
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        seconds.append(time.perf_counter() - start)
        del batches
    return {"method": method, "workers": workers, "first_s": seconds[0], "later_s": seconds[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=6, help="loader passes per method")
    parser.add_argument("--smoke", action="store_true", help="2 passes, 1 worker")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "worker_start.json"))
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        method, workers, passes, shards = args.measure
        print(json.dumps(measure(method, int(workers), int(passes), shards)))
        return
    from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards

    passes = 2 if args.smoke else args.passes
    worker_counts = (1,) if args.smoke else (1, 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_shapes_shards(tmp, 128, ShapesSpec(image_size=64), samples_per_shard=64, seed=0)
        for workers in worker_counts:
            for method in METHODS:
                command = [sys.executable, __file__, "--measure", method, str(workers)]
                output = subprocess.run(
                    [*command, str(passes), tmp], capture_output=True, text=True, check=True
                )
                rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    for row in rows:
        row["later_median_s"] = statistics.median(row["later_s"]) if row["later_s"] else None
    summary = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "passes": passes,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print("| method | workers | first pass (s) | later passes, median (s) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        later = row["later_median_s"]
        later_text = "-" if later is None else f"{later:.2f}"
        print(f"| {row['method']} | {row['workers']} | {row['first_s']:.2f} | {later_text} |")
    print(f"written {out}")


if __name__ == "__main__":
    main()
