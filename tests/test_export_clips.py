"""A clip model's export: the X-encoder's frame sampling travels with it."""

from __future__ import annotations

import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER

from jepa_lightning.encoders import TextEncoder, VideoCodec, VisionEncoder
from jepa_lightning.export import export_model, load_exported
from jepa_lightning.modules import VLJEPA


def test_clip_model_exports_and_reloads_with_its_frames(tmp_path) -> None:
    torch.manual_seed(0)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT, num_frames=3, frame_stride=2, short_clips="loop"),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )
    exported = load_exported(export_model(model, str(tmp_path / "export")))
    assert exported.x_encoder.grid == (3, 4, 4)
    assert exported.x_encoder.codec() == VideoCodec(32, 3, 2, short_clips="loop")
    clips = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    model.model.eval()
    with torch.no_grad():
        for frames in (3, 1):  # whole clips, and single frames
            torch.testing.assert_close(
                exported.embed_inputs(clips[:, :frames]),
                model.model.embed_inputs(clips[:, :frames]),
                atol=1e-5,
                rtol=0,
            )
