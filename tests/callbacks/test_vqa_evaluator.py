"""VQAEvaluator logs the discriminative VQA accuracy that the standalone model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_shapes_data
from lightning.pytorch import Trainer

from jepa_lightning.callbacks.vqa import VQAEvaluator
from jepa_lightning.data import ShapesDataModule
from jepa_lightning.data.images import image_batches
from jepa_lightning.evaluate import _vqa
from jepa_lightning.inference import PretrainedVLJEPA
from jepa_lightning.modules import VLJEPA

TYPES = ["colour", "shape", "position", "count"]


def validate(model: VLJEPA, data, tmp_path) -> dict[str, float]:
    trainer = Trainer(
        callbacks=[VQAEvaluator(question_types=TYPES)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(model, data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_validation_accuracy_equals_the_standalone_models(tiny_model_kwargs, tmp_path) -> None:
    torch.manual_seed(0)
    model = VLJEPA(**tiny_model_kwargs)
    data = ShapesDataModule(
        root=str(tmp_path / "qa"),
        train_samples=64,
        val_samples=96,
        image_size=32,
        with_queries=True,
        batch_size=32,
        num_workers=0,
        collator=model.batch_collator(),
    )
    data.prepare_data()
    logged = validate(model, data, tmp_path)
    network = PretrainedVLJEPA(model.model)
    expected = _vqa(network, image_batches(str(tmp_path / "qa" / "val"), network._codec(), 32))
    assert logged["val/vqa/accuracy"] == pytest.approx(expected["vqa_accuracy"], abs=1e-6)
    assert logged["val/vqa/chance"] == pytest.approx(expected["chance"], abs=1e-6)
    for kind in TYPES:
        assert logged[f"val/vqa/{kind}/accuracy"] == pytest.approx(
            expected[f"vqa_accuracy_{kind}"], abs=1e-6
        )
    assert logged["val/vqa/count/chance"] == pytest.approx(0.5)


def test_data_without_questions_is_skipped_with_a_warning(
    tiny_model_kwargs, shapes_root, tmp_path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    with pytest.warns(UserWarning, match="VQAEvaluator: no validation sample has a question"):
        logged = validate(model, tiny_shapes_data(shapes_root, model), tmp_path)
    assert not any(key.startswith("val/vqa") for key in logged)
