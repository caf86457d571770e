"""VL-JEPA on clips: V-JEPA 2 tubelets and a per-frame ViT train; images -> clips hand-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    TINY_BERT,
    TINY_LLAMA,
    TINY_VIT,
    TINY_VJEPA2_CLIPS,
    TOKENIZER,
    tiny_shapes_data,
)
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_stage2 import FirstStepWeights, core_state

from jepa_lightning.data import MovingShapesDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE, MaskedTokenPrediction


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moving_shapes")
    MovingShapesDataModule(
        root=str(root), train_samples=32, val_samples=8, image_size=32
    ).prepare_data()
    return root


def clip_model(backbone: dict[str, Any], **kwargs: Any) -> VLJEPA:
    return VLJEPA(
        x_encoder=VisionEncoder(backbone, num_frames=4, frame_stride=5),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        warmup_steps=1,
        **kwargs,
    )


def clip_data(root: Path, model: VLJEPA) -> MovingShapesDataModule:
    return MovingShapesDataModule(
        root=str(root),
        train_samples=32,
        val_samples=8,
        image_size=32,
        collator=model.batch_collator(),
        batch_size=8,
        num_workers=0,
        shuffle_buffer=8,
    )


def trainer(tmp_path: Path, steps: int, **kwargs: Any) -> Trainer:
    settings: dict[str, Any] = {
        "max_steps": steps,
        "limit_val_batches": 1,
        "val_check_interval": steps,
        "check_val_every_n_epoch": None,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    settings.update(kwargs)
    return Trainer(**settings)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [TINY_VJEPA2_CLIPS, TINY_VIT], ids=["vjepa2", "per-frame-vit"])
def test_clip_models_train(backbone: dict[str, Any], clips_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    objectives = [CaptionInfoNCE(), MaskedTokenPrediction(masking={"temporal_scale": (0.5, 1.0)})]
    model = clip_model(backbone, objectives=objectives)
    grid = model.model.x_encoder.grid
    assert grid == ((2, 2, 2) if backbone is TINY_VJEPA2_CLIPS else (4, 4, 4))
    before = core_state(model)
    fit = trainer(tmp_path, steps=3, log_every_n_steps=1)  # the loss parts: logging steps
    fit.fit(model, clip_data(clips_root, model))
    assert fit.global_step == 3
    for name in ("train/loss_caption", "train/loss_masked", "val/recall_mean"):
        assert torch.isfinite(fit.callback_metrics[name]), name
    after = core_state(model)
    assert not torch.equal(
        before["predictor.position_embedding"], after["predictor.position_embedding"]
    )
    # The frozen X-encoder did not move.
    for name, value in before.items():
        if name.startswith("x_encoder."):
            assert torch.equal(value, after[name]), name


@pytest.mark.slow
def test_image_stage_hands_its_weights_to_the_clip_stage(
    shapes_root: Path, clips_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    stage1 = clip_model(TINY_VIT)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "stage1", save_last=True)
    images = tiny_shapes_data(shapes_root, stage1, batch_size=8)
    fit = trainer(tmp_path, steps=2, enable_checkpointing=True, callbacks=[checkpoints])
    fit.fit(stage1, images)
    first = next(iter(images.train_dataloader()))
    assert first.x.shape == (8, 1, 3, 32, 32)  # images enter the clip model as one-frame clips
    stage1_weights = core_state(stage1)

    torch.manual_seed(1)
    stage2 = clip_model(TINY_VIT, init_weights=str(tmp_path / "stage1" / "last.ckpt"))
    recorder = FirstStepWeights()
    trainer(tmp_path, steps=1, callbacks=[recorder]).fit(stage2, clip_data(clips_root, stage2))
    assert recorder.state.keys() == stage1_weights.keys()
    for name, value in stage1_weights.items():
        torch.testing.assert_close(recorder.state[name], value, rtol=0, atol=0, msg=name)
    assert recorder.global_step == 0
