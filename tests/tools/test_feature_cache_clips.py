"""The frozen-feature cache on clips: the centred clip's tokens, read back in place of videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from test_feature_cache import _cache, _first_val_batch, _loss

from jepa_lightning.data import MovingShapesDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moving_shapes")
    MovingShapesDataModule(
        root=str(root), train_samples=16, val_samples=16, image_size=32
    ).prepare_data()
    return root


def test_cached_clip_tokens_give_the_same_loss(clips_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT, num_frames=4, frame_stride=5),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    ).eval()
    clips = _first_val_batch(clips_root / "val", model)
    assert clips.x.shape == (16, 4, 3, 32, 32)
    _cache(clips_root / "val", tmp_path / "cache", model.model.x_encoder, dtype="float32")
    cached = _first_val_batch(tmp_path / "cache", model)
    assert cached.cached and cached.keys == clips.keys
    assert cached.x.tokens.shape == (16, 4 * 16, 32)  # every frame's tokens, frame-major
    with torch.no_grad():
        expected_tokens = model.model.x_encoder(clips.x).tokens
    torch.testing.assert_close(cached.x.tokens, expected_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(_loss(model, cached), _loss(model, clips), rtol=0, atol=1e-5)
