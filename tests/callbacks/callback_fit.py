"""A tiny VL-JEPA fit with a TensorBoard logger, and readers of what it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import tiny_shapes_data
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor

from jepa_lightning.modules import VLJEPA


def fit(
    model_kwargs: dict[str, Any],
    shapes_root: Path,
    tmp_path: Path,
    callbacks: list[Callback],
    logger: bool = True,
    **trainer_kwargs: Any,
) -> tuple[Trainer, Path]:
    """Fits 4 steps (validation after 2 and 4, 2 batches of 16) and returns the log dir."""
    model = VLJEPA(**model_kwargs)
    data = tiny_shapes_data(shapes_root, model)
    settings: dict[str, Any] = {
        "max_steps": 4,
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 2,
        "num_sanity_val_steps": 1,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    settings.update(trainer_kwargs)
    tb = TensorBoardLogger(save_dir=tmp_path, name="tb") if logger else False
    trainer = Trainer(logger=tb, callbacks=callbacks, **settings)
    trainer.fit(model, data)
    return trainer, Path(tb.log_dir) if tb else tmp_path


class RecordValidation(Callback):
    """Keeps the embeddings and metadata of the latest validation epoch (not the sanity check)."""

    def __init__(self) -> None:
        self.predicted: list[Tensor] = []
        self.texts: list[Tensor] = []
        self.metas: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.predicted, self.texts, self.metas = [], [], []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self.predicted.append(outputs["image_embeddings"].float())
        self.texts.append(outputs["text_embeddings"].float())
        self.metas.extend(batch.meta)


def events(log_dir: Path) -> EventAccumulator:
    """The event file(s) of ``log_dir``, loaded."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    """The steps at which ``tag`` was written."""
    return [event.step for event in accumulator.Scalars(tag)]
