"""Benchmark bf16-mixed against fp32 training steps of the default model on this CPU.

Both sides run ``Trainer.fit`` on the default model (``configs/shapes_tiny.yaml``'s
``model``) from the same initial weights over the same precomputed batches (see
``bench_lightning_overhead.py``, whose helpers this reuses), with ``precision="32-true"``
and ``precision="bf16-mixed"`` (CPU autocast to bfloat16; weights and optimizer state stay
float32). Each repeat times the steps after ``--warmup`` steps; repeats alternate between
the two (A, B, B, A, ...) and the medians are compared, as the machine is shared and noisy.
The table also gives the first batch's loss under each precision. On a GPU the ratio is
very different (tensor cores): this measures the CPU only.

Usage::

    python benchmarks/bench_precision.py [--steps 10] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import lightning
import torch
from bench_lightning_overhead import (
    DEFAULT_CONFIG,
    REPO,
    build_default_model,
    interleave,
    lightning_run,
    make_batches,
)

PRECISIONS = ("32-true", "bf16-mixed")


def cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 instruction-set flags (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(flag for flag in flags if "bf16" in flag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=10, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    initial, config_batch_size = build_default_model(args.config)
    batch_size = args.batch_size or config_batch_size
    batches = make_batches(initial, args.steps, batch_size)

    losses = {}
    with torch.no_grad():
        losses["32-true"] = initial.compute_losses(batches[0])["loss"].item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses["bf16-mixed"] = initial.compute_losses(batches[0])["loss"].item()

    def run(precision: str) -> Callable[[], float]:
        return lambda: lightning_run(copy.deepcopy(initial), batches, args.warmup, precision)

    times = interleave({precision: run(precision) for precision in PRECISIONS}, args.repeats)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = median["bf16-mixed"] / median["32-true"]
    header = f"{'precision':>10} {'median ms/step':>15} {'min':>8} {'max':>8} {'loss@0':>8}"
    print(header)
    print("-" * len(header))
    for name, ts in times.items():
        print(
            f"{name:>10} {1e3 * median[name]:>15.1f} {1e3 * min(ts):>8.1f} "
            f"{1e3 * max(ts):>8.1f} {losses[name]:>8.4f}"
        )
    print(f"bf16-mixed / fp32 step time = {ratio:.3f}")

    config = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
    result = {
        "benchmark": "bf16-mixed vs fp32 (32-true) Trainer.fit step time, VLJEPA, CPU",
        "config": str(config),
        "batch_size": batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "first_batch_loss": losses,
        "median_ms_per_step": {name: 1e3 * m for name, m in median.items()},
        "ms_per_step": {name: [1e3 * t for t in ts] for name, ts in times.items()},
        "ratio_bf16_over_fp32": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
