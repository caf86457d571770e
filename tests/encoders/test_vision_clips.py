"""VisionEncoder on clips: V-JEPA 2 tubelets, per-frame image backbones, fewer frames, images."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT, TINY_VJEPA2_CLIPS
from test_encoders import TINY_DINOV2, TINY_SIGLIP_VISION

from jepa_lightning.encoders import ImageCodec, VideoCodec, VisionEncoder


def clips(batch: int, frames: int, side: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, frames, 3, side, side), dtype=torch.uint8)


@pytest.mark.parametrize(
    "backbone", [TINY_VIT, TINY_DINOV2, TINY_SIGLIP_VISION], ids=["vit", "dinov2", "siglip"]
)
def test_per_frame_backbone_encodes_each_frame_in_frame_major_order(backbone: dict) -> None:
    encoder = VisionEncoder(backbone, num_frames=3)
    image_encoder = VisionEncoder(backbone)
    image_encoder.backbone.load_state_dict(encoder.backbone.state_dict())  # same weights
    assert encoder.grid == (3, 4, 4) and encoder.num_tokens == 48
    batch = clips(2, 3)
    tokens = encoder(batch).tokens
    assert tokens.shape == (2, 48, 32)
    # Brute force: each frame through the image encoder, concatenated frame after frame.
    expected = torch.cat([image_encoder(batch[:, t]).tokens for t in range(3)], dim=1)
    torch.testing.assert_close(tokens, expected)
    # Fewer frames (an image is a one-frame clip): the first frames' tokens, same positions.
    torch.testing.assert_close(encoder(batch[:, :1]).tokens, expected[:, :16])
    torch.testing.assert_close(encoder(batch[:, 0]).tokens, expected[:, :16])


def test_vjepa2_reads_clips_in_tubelets() -> None:
    encoder = VisionEncoder(TINY_VJEPA2_CLIPS, num_frames=4)
    assert encoder.grid == (2, 2, 2) and encoder.num_tokens == 8
    batch = clips(2, 4)
    out = encoder(batch)
    assert out.tokens.shape == (2, 8, 32) and out.mask.all()
    assert encoder(batch[:, :2]).tokens.shape == (2, 4, 32)  # one tubelet
    assert encoder(batch[:, 0]).tokens.shape == (2, 4, 32)  # an image fills one tubelet
    with pytest.raises(ValueError, match="multiple of 2"):
        encoder(batch[:, :3])
    with pytest.raises(ValueError, match="multiple of its tubelet_size"):
        VisionEncoder(TINY_VJEPA2_CLIPS, num_frames=3)
    with pytest.raises(ValueError, match="at most its frames_per_clip"):
        VisionEncoder(TINY_VJEPA2_CLIPS, num_frames=6)


def test_clip_encoder_geometry_codec_and_description() -> None:
    encoder = VisionEncoder(TINY_VIT, num_frames=4, frame_stride=3, short_clips="loop")
    codec = encoder.codec()
    assert codec == VideoCodec(32, num_frames=4, frame_stride=3, short_clips="loop")
    described = encoder.describe()
    assert described["grid"] == [4, 4, 4] and described["num_tokens"] == 64
    assert described["clip"] == {
        "num_frames": 4,
        "frame_stride": 3,
        "fps": None,
        "short_clips": "loop",
    }
    # Images keep their codec, grid and description (feature-cache fingerprints unchanged).
    image = VisionEncoder(TINY_VIT)
    assert image.codec() == ImageCodec(32) and image.grid == (4, 4)
    assert "clip" not in image.describe()
    with pytest.raises(ValueError, match=r"T <= 4"):
        encoder(clips(1, 5))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        image(clips(1, 2))


def test_clip_thumbnails_show_the_middle_frame() -> None:
    encoder = VisionEncoder(TINY_VIT, num_frames=3)
    batch = clips(2, 3)
    torch.testing.assert_close(encoder.thumbnails(batch, 32), batch[:, 1])
