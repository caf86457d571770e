"""Timed training steps of a config's model: under ``Trainer.fit`` and in a plain loop.

Shared by ``bench_precision.py``, ``bench_lightning_overhead.py`` and ``gpu_check.py``: the
model of a LightningCLI config (its ``model`` section instantiated as the CLI does), batches
of generated shapes samples collated once (so that data loading is in neither side), and the
seconds per step after some warm-up steps.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from common import REPO, Stopwatch, Timing
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.shapes import ShapesSpec, generate_sample

DEFAULT_CONFIG = REPO / "configs" / "shapes_tiny.yaml"


def load_config(path: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The config file as a dict."""
    return yaml.safe_load(path.read_text())


def build_model(section: dict[str, Any], seed: int = 0) -> VLJEPA:
    """The ``model`` section of a config, instantiated as LightningCLI does, from ``seed``.

    Raises:
        ValueError: If it is not a VLJEPA with a VisionEncoder X-encoder.
    """
    from jsonargparse import ArgumentParser  # here: gpu_check.py runs where it may be missing

    seed_everything(seed, verbose=False)
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": section})).model
    if not isinstance(model, VLJEPA) or not isinstance(model.model.x_encoder, VisionEncoder):
        raise ValueError("the benchmark needs a VLJEPA with a VisionEncoder X-encoder")
    return model


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
        self.watch = Stopwatch()
        self.timing = Timing(0.0, 0.0)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            self.watch.start()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.timing = self.watch.stop()


def per_step(timing: Timing, steps: int) -> Timing:
    """A timing of ``steps`` steps, per step."""
    return Timing(timing.wall_s / steps, timing.cpu_s / steps, timing.page_faults / steps)


def lightning_run(
    model: VLJEPA,
    batches: list[Batch],
    warmup: int,
    precision: str = "32-true",
    accelerator: str = "cpu",
    log_every_n_steps: int = 50,
) -> Timing:
    """Time per step of ``Trainer.fit`` over ``batches`` (after ``warmup`` steps)."""
    timer = StepTimer(warmup)
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=len(batches),
        log_every_n_steps=log_every_n_steps,
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
    return per_step(timer.timing, len(batches) - warmup)


def autocast(precision: str, device: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The autocast context of a Lightning precision value (none for a ``-true`` one)."""
    if precision == "bf16-mixed":
        return torch.autocast(device, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device, dtype=torch.float16)
    return contextlib.nullcontext()


def plain_run(
    model: VLJEPA, batches: list[Batch], warmup: int, precision: str = "32-true"
) -> Timing:
    """Time per step of a hand-written loop over ``batches`` (after ``warmup`` steps).

    The same work as a Lightning step: the optimizer and schedule of
    ``VLJEPA.build_optimizer``, the losses under the precision's autocast, backward,
    optimizer and scheduler steps, ``zero_grad`` and the objectives' post-step rules.
    """
    optimizer, scheduler = model.build_optimizer(len(batches))
    model.train()
    watch = Stopwatch()
    for step, batch in enumerate(batches):
        if step == warmup:
            watch.start()
        with autocast(precision):
            loss = model.compute_losses(BatchForward(model.model, batch))["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_train_batch_end(loss, batch, step)  # the objectives' post-step rules
    return per_step(watch.stop(), len(batches) - warmup)
