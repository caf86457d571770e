"""A tiny I-JEPA fit on the session's shapes shards, and a recorder of its last validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import TINY_VIT, tiny_shapes_data
from lightning.pytorch import Callback, Trainer

from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.modules import IJEPA

TINY_PREDICTOR: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 8,
    "max_position_embeddings": 64,
}

TASKS = {
    "shape": ["circle", "square", "triangle"],
    "colour": ["red", "green", "blue", "yellow"],
    "position": ["left", "center", "right"],
}


def tiny_ijepa(**kwargs: Any) -> IJEPA:
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VIT, frozen=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    settings: dict[str, Any] = {
        "predictor_lm": TINY_PREDICTOR,
        "masking": {"min_keep": 2},
        "warmup_steps": 2,
    }
    settings.update(kwargs)
    return IJEPA(encoder, **settings)


def fit_ijepa(
    shapes_root: Path, tmp_path: Path, callbacks: list[Callback], **trainer_kwargs: Any
) -> tuple[IJEPA, Trainer]:
    """Fits 4 steps (validation after 2 and 4, 2 batches of 16)."""
    model = tiny_ijepa()
    settings: dict[str, Any] = {
        "max_steps": 4,
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 2,
        "num_sanity_val_steps": 1,
        "log_every_n_steps": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    settings.update(trainer_kwargs)
    trainer = Trainer(callbacks=callbacks, **settings)
    trainer.fit(model, tiny_shapes_data(shapes_root, model))
    return model, trainer


class RecordFeatures(Callback):
    """Keeps the features and metadata of the latest validation epoch."""

    def __init__(self) -> None:
        self.features: list[torch.Tensor] = []
        self.metas: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.features, self.metas = [], []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self.features.append(outputs["features"].float())
        self.metas.extend(batch.meta)
