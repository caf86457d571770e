"""The I-JEPA core: context tokens only, per-block prediction, EMA arithmetic, 2-D and 3-D grids."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TINY_VIT
from torch import Tensor, nn

from jepa_lightning.encoders import EncoderOutput, ModalityEncoder, VisionEncoder
from jepa_lightning.masking import MaskPair, take_tokens
from jepa_lightning.models import IJEPAModel
from jepa_lightning.models.ijepa import encode_visible, momentum_at
from jepa_lightning.objectives import LatentRegression

TINY_VJEPA2: dict[str, Any] = {
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 8,
    "frames_per_clip": 4,
    "tubelet_size": 2,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "pred_hidden_size": 16,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
}
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


class TinyClips(ModalityEncoder):
    """A test clip encoder: ``(B, T, 3, H, W)`` to frame-major patch tokens on a 3-D grid,
    which encodes only the visible tokens itself (a :class:`VisibleTokenEncoder`)."""

    def __init__(self, frames: int = 2, side: int = 16, patch: int = 4, dim: int = 16) -> None:
        super().__init__(frozen=False)
        self.patches = nn.Conv3d(3, dim, (1, patch, patch), stride=(1, patch, patch))
        self._grid = (frames, side // patch, side // patch)
        self.positions = nn.Parameter(0.02 * torch.randn(frames * (side // patch) ** 2, dim))
        self.layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)

    @property
    def output_dim(self) -> int:
        return self.positions.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]

    @property
    def grid(self) -> tuple[int, int, int]:
        return self._grid

    def codec(self) -> Any:  # a test double: no sample decoding
        raise NotImplementedError

    def _embed(self, clips: Tensor) -> Tensor:
        return self.patches(clips.transpose(1, 2)).flatten(2).transpose(1, 2) + self.positions

    def encode(self, inputs: Tensor) -> EncoderOutput:
        tokens = self.layer(self._embed(inputs))
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))

    def encode_visible(self, inputs: Tensor, visible: Tensor) -> Tensor:
        return self.layer(take_tokens(self._embed(inputs), visible))


def _image_model(**masking: Any) -> IJEPAModel:
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VIT, frozen=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return IJEPAModel(encoder, TINY_PREDICTOR, masking={"min_keep": 2, **masking})


def _images(n: int = 3, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def test_forward_predicts_each_target_block() -> None:
    model = _image_model()
    images = _images().to(torch.uint8)
    masks = model.draw_masks(3, torch.device("cpu"), torch.Generator().manual_seed(0))
    output = model(images, masks)
    batch, blocks, size = masks.target_blocks.shape
    assert output.predictions.shape == output.targets.shape == (batch, blocks, size, 32)
    assert output.features.shape == (batch, 32)
    full = model.target_tokens(images)
    for b in range(batch):
        for t in range(blocks):
            assert torch.equal(output.targets[b, t], full[b, masks.target_blocks[b, t]])
    assert torch.allclose(output.features, full.mean(dim=1))


def test_blocks_are_predicted_independently() -> None:
    # Moving the second block leaves the first block's predictions as they were.
    model = _image_model().eval()
    images = _images().to(torch.uint8)
    masks = model.draw_masks(3, torch.device("cpu"), torch.Generator().manual_seed(1))
    moved = masks.target_blocks.clone()
    moved[:, 1] = masks.target_blocks[:, 1].flip(0)
    first = model(images, masks).predictions
    second = model(images, masks._replace(target_blocks=moved)).predictions
    assert torch.allclose(first[:, 0], second[:, 0], atol=1e-6)
    assert not torch.allclose(first[:, 1], second[:, 1])


def test_context_encoder_sees_only_the_visible_patches() -> None:
    model = _image_model()
    encoder = model.context_encoder
    images = _images(2).to(torch.uint8)
    everything = torch.arange(16).expand(2, -1)
    assert torch.allclose(encode_visible(encoder, images, everything), encoder(images).tokens)
    visible = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 12]])
    tokens = encode_visible(encoder, images, visible)
    assert tokens.shape == (2, 4, 32)
    # Repainting every hidden patch (8x8 pixels each) changes nothing at the visible ones.
    repainted = images.clone()
    for row in range(2):
        for index in set(range(16)) - set(visible[row].tolist()):
            r, c = divmod(index, 4)
            repainted[row, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 255
    assert torch.allclose(encode_visible(encoder, repainted, visible), tokens, atol=1e-6)
    # ...whereas the full encoder, where every patch attends to every other, does change.
    full = encoder(repainted).tokens
    assert not torch.allclose(take_tokens(full, visible), tokens, atol=1e-4)


def test_target_encoder_is_a_frozen_copy_and_gets_no_gradient() -> None:
    model = _image_model()
    target, context = model.target_encoder, model.context_encoder
    for (name, t), c in zip(target.named_parameters(), context.parameters(), strict=True):
        assert torch.equal(t, c), name
        assert not t.requires_grad
    model.train()
    assert not target.training and context.training
    # The ViT pooler does not shape the tokens: frozen in the context encoder (DDP).
    frozen = {n for n, p in context.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"}
    images = _images().to(torch.uint8)
    output = model(images, model.draw_masks(3, torch.device("cpu")))
    LatentRegression()(output.predictions, output.targets).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in context.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in model.predictor.parameters())


def test_ema_update_arithmetic() -> None:
    model = _image_model()
    with torch.no_grad():
        for param in model.context_encoder.parameters():
            param.add_(torch.randn_like(param))
    before = [p.clone() for p in model.target_encoder.parameters()]
    context = [p.clone() for p in model.context_encoder.parameters()]
    model.update_target(0.9)
    for old, new, c in zip(before, model.target_encoder.parameters(), context, strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * c, atol=1e-6)
    model.update_target(1.0)
    for old, new, c in zip(before, model.target_encoder.parameters(), context, strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * c, atol=1e-6)
    model.update_target(0.0)
    for new, c in zip(model.target_encoder.parameters(), context, strict=True):
        assert torch.equal(new, c)
    with pytest.raises(ValueError, match="momentum"):
        model.update_target(1.5)


def test_momentum_schedule() -> None:
    assert momentum_at(0, 100, 0.996, 1.0) == 0.996
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, 1.0) == 1.0
    assert momentum_at(150, 100, 0.996, 1.0) == 1.0  # kept after the run's end
    values = [momentum_at(k, 10, 0.5, 0.9) for k in range(11)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_3d_grid_with_blocks_through_time() -> None:
    torch.manual_seed(0)
    encoder = TinyClips(frames=4)
    model = IJEPAModel(
        encoder, TINY_PREDICTOR, masking={"temporal_scale": (0.5, 0.5), "min_keep": 2}
    )
    assert model.mask_generator.frames == 4 and model.num_tokens == 64
    clips = torch.randn(2, 4, 3, 16, 16)
    masks = model.draw_masks(2, torch.device("cpu"), torch.Generator().manual_seed(0))
    frames_of_blocks = masks.target_blocks // 16
    assert all(len(set(block.tolist())) == 2 for block in frames_of_blocks.flatten(0, 1))
    output = model(clips, masks)
    assert output.predictions.shape == (2, 4, masks.target_blocks.shape[-1], 16)
    loss = LatentRegression()(output.predictions, output.targets)
    loss.backward()
    assert encoder.positions.grad is not None


def test_encoders_that_cannot_be_pretrained_are_refused() -> None:
    with pytest.raises(ValueError, match="frozen: false"):
        IJEPAModel(VisionEncoder(TINY_VIT), TINY_PREDICTOR)

    class NoGrid(TinyClips):
        @property
        def grid(self) -> None:  # type: ignore[override]
            return None

    with pytest.raises(ValueError, match="grid"):
        IJEPAModel(NoGrid(), TINY_PREDICTOR)
    clips = VisionEncoder(TINY_VIT, frozen=False, num_frames=2)
    with pytest.raises(ValueError, match="image backbone on clips"):
        IJEPAModel(clips, TINY_PREDICTOR)
    with pytest.raises(ValueError, match="with_blocks"):
        model = _image_model()
        model(_images().to(torch.uint8), MaskPair(torch.zeros(3, 4, dtype=torch.long), None))


@pytest.mark.parametrize("num_frames", [1, 4])
def test_vjepa2_encodes_only_the_visible_tokens(num_frames: int) -> None:
    # V-JEPA 2 on images (one tubelet) and on clips of two tubelets: its rotary positions come
    # from the visible indices, so keeping every token gives the full encoding, and repainting
    # the hidden tokens' pixels changes nothing at the visible ones.
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VJEPA2, frozen=False, num_frames=num_frames)
    shape = (2, 3, 32, 32) if num_frames == 1 else (2, num_frames, 3, 32, 32)
    inputs = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1))
    inputs = inputs.to(torch.uint8)
    n = encoder.num_tokens
    assert n == (16 if num_frames == 1 else 32)
    everything = torch.arange(n).expand(2, -1)
    full = encoder(inputs).tokens
    assert torch.allclose(encode_visible(encoder, inputs, everything), full, atol=1e-5)
    visible = torch.stack([torch.arange(0, n, 4), torch.arange(1, n, 4)])
    tokens = encode_visible(encoder, inputs, visible)
    clips = inputs if num_frames > 1 else inputs.unsqueeze(1)
    repainted = clips.clone()
    for row in range(2):
        for index in set(range(n)) - set(visible[row].tolist()):
            tubelet, rest = divmod(index, 16)
            r, c = divmod(rest, 4)
            frames = slice(2 * tubelet, 2 * tubelet + 2)
            repainted[row, frames, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 255
    repainted = repainted if num_frames > 1 else repainted[:, 0]
    assert torch.allclose(encode_visible(encoder, repainted, visible), tokens, atol=1e-5)
    assert not torch.allclose(take_tokens(encoder(repainted).tokens, visible), tokens, atol=1e-4)


def test_vjepa2_clips_pretrain_with_blocks_through_time() -> None:
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VJEPA2, frozen=False, num_frames=4)
    model = IJEPAModel(
        encoder, TINY_PREDICTOR, masking={"temporal_scale": (0.5, 0.5), "min_keep": 2}
    )
    assert model.mask_generator.frames == 2 and model.num_tokens == 32
    clips = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    output = model(clips, model.draw_masks(2, torch.device("cpu")))
    LatentRegression()(output.predictions, output.targets).backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    images = clips[:, 0]
    with pytest.raises(ValueError, match="full clips"):
        model(images, model.draw_masks(2, torch.device("cpu")))
