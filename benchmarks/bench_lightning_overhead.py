"""Benchmark a Lightning training step against a hand-written PyTorch loop.

Both sides train the default model (``configs/shapes_tiny.yaml``'s ``model``: frozen tiny ViT,
small BERT, 2-layer predictor) from the same initial weights on the same precomputed batches
(collated "shapes" samples in a list, so data loading is excluded from both):

* ``lightning``: ``Trainer.fit`` for ``--steps`` steps (logger, progress bar, checkpointing,
  model summary and validation off). This includes ``VLJEPA.training_step``'s bookkeeping
  (the all-rank non-finite check, ``self.log`` of the losses and temperature).
* ``plain``: ``compute_losses`` → ``backward`` → ``optimizer.step`` → ``scheduler.step`` →
  ``zero_grad`` → the objectives' ``after_optimizer_step`` (temperature clamp): the same
  optimizer, groups and schedule as ``VLJEPA.configure_optimizers``
  (``VLJEPA.build_optimizer``).

Each repeat times the steps after ``--warmup`` steps (setup excluded); repeats alternate
between the two sides (A, B, B, A, ...) and the medians are compared, as the machine is
shared and noisy. Goal: ``lightning / plain <= 1.03``.

Usage::

    python benchmarks/bench_lightning_overhead.py [--steps 12] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.shapes import ShapesSpec, generate_sample

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "shapes_tiny.yaml"
GOAL = 1.03


def build_default_model(config_path: Path) -> tuple[VLJEPA, int]:
    """The model of a LightningCLI config (VLJEPA with a VisionEncoder X-encoder).

    Its ``model`` section is instantiated as the CLI does (encoders, objectives and optimizer
    from their ``class_path``).

    Returns:
        The model and the config's ``data.init_args.batch_size``.
    """
    config = yaml.safe_load(config_path.read_text())
    section = config["model"]
    text = section["init_args"]["text_encoder"]["init_args"]
    if "tokenizer" in text:
        text["tokenizer"] = str(REPO / text["tokenizer"])  # relative to the repository root
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": section})).model
    if not isinstance(model, VLJEPA) or not isinstance(model.model.x_encoder, VisionEncoder):
        raise ValueError(f"{config_path}: the benchmark needs a VLJEPA with a VisionEncoder")
    return model, int(config["data"]["init_args"]["batch_size"])


def make_batches(model: VLJEPA, count: int, batch_size: int) -> list[Batch]:
    """Collated batches of generated shapes samples, as the training stream yields them."""
    collator = model.batch_collator()
    x_encoder = model.model.x_encoder
    assert isinstance(x_encoder, VisionEncoder)
    codec = x_encoder.codec()
    spec = ShapesSpec(image_size=x_encoder.image_size)
    batches = []
    for b in range(count):
        samples = []
        for i in range(b * batch_size, (b + 1) * batch_size):
            image, caption, meta = generate_sample(i, spec=spec)
            encoded = io.BytesIO()
            image.save(encoded, format="PNG")
            pixels = codec.decode(encoded.getvalue())
            samples.append(
                {"key": str(i), "x": pixels, "caption": caption, "query": None, "meta": meta}
            )
        batches.append(collator.collate(samples))
    return batches


class Batches:
    """A plain iterable over precomputed batches (a list would be read as several loaders)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepTimer(Callback):
    """Times the training steps from step ``warmup`` to the last one."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.end = time.perf_counter()


def lightning_run(
    model: VLJEPA, batches: list[Batch], warmup: int, precision: str = "32-true"
) -> float:
    """Seconds per step of ``Trainer.fit`` over ``batches`` (after ``warmup`` steps)."""
    timer = StepTimer(warmup)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        precision=precision,  # type: ignore[arg-type]  # a Literal in Lightning's signature
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=Batches(batches))
    return (timer.end - timer.start) / (len(batches) - warmup)


def plain_run(model: VLJEPA, batches: list[Batch], warmup: int) -> float:
    """Seconds per step of a hand-written loop over ``batches`` (after ``warmup`` steps)."""
    optimizer, scheduler = model.build_optimizer(len(batches))
    model.train()
    start = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        loss = model.compute_losses(BatchForward(model.model, batch))["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for objective in model.objectives.values():
            objective.after_optimizer_step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def interleave(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Calls each run ``repeats`` times in ABBA order; returns each run's results."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(runs[name]())
            print(f"  repeat {r + 1}/{repeats} {name:>9}: {1e3 * times[name][-1]:8.1f} ms/step")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=12, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/lightning_overhead.json")
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    initial, config_batch_size = build_default_model(args.config)
    batch_size = args.batch_size or config_batch_size
    batches = make_batches(initial, args.steps, batch_size)

    times = interleave(
        {
            "lightning": lambda: lightning_run(copy.deepcopy(initial), batches, args.warmup),
            "plain": lambda: plain_run(copy.deepcopy(initial), batches, args.warmup),
        },
        args.repeats,
    )
    median = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = median["lightning"] / median["plain"]
    header = f"{'side':>10} {'median ms/step':>15} {'min':>8} {'max':>8}"
    print(header)
    print("-" * len(header))
    for name, ts in times.items():
        print(f"{name:>10} {1e3 * median[name]:>15.1f} {1e3 * min(ts):>8.1f} {1e3 * max(ts):>8.1f}")
    print(f"lightning / plain = {ratio:.3f} (goal <= {GOAL})")

    result = {
        "benchmark": "Lightning Trainer.fit step vs hand-written PyTorch loop, VLJEPA, CPU, fp32",
        "config": str(
            args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
        ),
        "batch_size": batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "median_ms_per_step": {name: 1e3 * m for name, m in median.items()},
        "ms_per_step": {name: [1e3 * t for t in ts] for name, ts in times.items()},
        "ratio": ratio,
        "goal": GOAL,
        "met": ratio <= GOAL,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
