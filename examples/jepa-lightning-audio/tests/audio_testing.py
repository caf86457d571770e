"""Tiny settings shared by the plugin's tests (8 kHz clips, a few-parameter encoder)."""

from __future__ import annotations

from typing import Any

import torch
from jepa_lightning.encoders import TextEncoder
from jepa_lightning.models import VLJEPAModel

from jepa_lightning_audio import AudioEncoder, TonesSpec
from jepa_lightning_audio.tones import generate_clip

SPEC = TonesSpec(sample_rate=8000, max_events=2)

TINY_AUDIO: dict[str, Any] = {
    "sample_rate": 8000,
    "n_fft": 128,
    "hop_length": 64,
    "n_mels": 16,
    "frames_per_token": 2,
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 32,
}
TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 16,
    "max_position_embeddings": 128,
}
TOKENIZER = "jepa_lightning:bert-base-uncased"


def tiny_model(frozen: bool = True) -> VLJEPAModel:
    """A VL-JEPA core with a tiny audio X-encoder, in eval mode."""
    torch.manual_seed(0)
    return VLJEPAModel(
        AudioEncoder(**TINY_AUDIO, frozen=frozen),
        TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    ).eval()


def clips(count: int, seed: int = 0) -> list[torch.Tensor]:
    """The first ``count`` clips of the tones set at 8 kHz."""
    return [torch.from_numpy(generate_clip(i, SPEC, seed)[0]) for i in range(count)]
