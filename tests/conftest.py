"""Shared fixtures: tiny random models and small shard folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from jepa_lightning.assets import resolve_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = resolve_tokenizer("jepa_lightning:bert-base-uncased")

TINY_VIT: dict[str, Any] = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_VJEPA2_CLIPS: dict[str, Any] = {  # 32 px, 16 px patches, tubelets of 2 of 4 frames
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 16,
    "frames_per_clip": 4,
    "tubelet_size": 2,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "pred_hidden_size": 32,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
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

TINY_DECODER_LM: dict[str, Any] = {  # the Y-decoder's LM (the tokenizer sets the vocabulary)
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_model_kwargs() -> dict[str, Any]:
    from jepa_lightning.encoders import TextEncoder, VisionEncoder

    return {
        "x_encoder": VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        "text_encoder": TextEncoder(TINY_BERT, tokenizer=TOKENIZER, lr_multiplier=0.5),
        "embed_dim": 16,
        "predictor_lm": TINY_LLAMA,
        "warmup_steps": 2,
    }


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small shapes train/val shard folders at 32x32, shared by the session."""
    from jepa_lightning.tools.shapes import ShapesSpec, ensure_shapes_shards

    root = tmp_path_factory.mktemp("shapes")
    spec = ShapesSpec(image_size=32)
    ensure_shapes_shards(
        str(root / "train"), 256, spec, samples_per_shard=64, seed=0, split="train"
    )
    ensure_shapes_shards(str(root / "val"), 64, spec, samples_per_shard=32, seed=1, split="val")
    return root


def tiny_shapes_data(root: Path, model: Any, batch_size: int = 16, **kwargs: Any) -> Any:
    """A ShapesDataModule over the session's small shapes shards (see ``shapes_root``), with
    the collator of ``model`` (a VLJEPA)."""
    from jepa_lightning.data import ShapesDataModule

    settings = {"train_samples": 256, "val_samples": 64, "image_size": 32, "num_workers": 0}
    settings.update(shuffle_buffer=32, collator=model.batch_collator(), **kwargs)
    return ShapesDataModule(root=str(root), batch_size=batch_size, **settings)


class SavePredictions(BasePredictionWriter):
    """Saves what predict_step returned (named by class_path in CLI tests)."""

    def __init__(self, path: str) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # type: ignore[no-untyped-def]
        torch.save(predictions, self.path)


FLASH = "ScaledDotProductFlashAttentionForCpuBackward0"


def attention_dtypes(output: torch.Tensor) -> list[torch.dtype]:
    """The query dtype of every flash-attention call in ``output``'s autograd graph."""
    seen, dtypes, stack = set(), [], [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == FLASH:
            dtypes.append(node._saved_query.dtype)
        stack += [parent for parent, _ in node.next_functions]
    return dtypes
