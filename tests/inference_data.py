"""What the inference tests read: an export of a tiny 64-pixel model and shapes PNG files."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import TINY_BERT, TINY_LLAMA, TOKENIZER

from jepa_lightning.tools.shapes import ShapesSpec, generate_sample

TINY_VIT_64 = {
    "model_type": "vit",
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def tiny_export(folder: Path) -> str:
    """Exports a small random model at the default 64-pixel images (as the README's tests)."""
    from jepa_lightning.encoders import TextEncoder, VisionEncoder
    from jepa_lightning.export import export_model
    from jepa_lightning.models import VLJEPAModel

    torch.manual_seed(0)
    text = TextEncoder(TINY_BERT, tokenizer=TOKENIZER)
    model = VLJEPAModel(VisionEncoder(TINY_VIT_64), text, 16, TINY_LLAMA)
    return export_model(model, str(folder), temperature=0.07)


def shapes_pngs(folder: Path, count: int, captions: bool = True) -> list[dict]:
    """Writes ``count`` fresh shapes images as PNG files (and side-car captions).

    Returns:
        Each image's generator metadata, with its ``path`` and ``caption``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        image, caption, meta = generate_sample(index, 11, ShapesSpec(), "pngs")
        path = folder / f"shape_{index:03d}.png"
        image.save(path)
        if captions:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
        written.append({**meta, "path": str(path), "caption": caption})
    return written
