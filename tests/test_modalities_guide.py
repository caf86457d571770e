"""docs/MODALITIES.md: its one-file modality and its shard writer run as written."""

from __future__ import annotations

import importlib
import io
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY_BERT, TINY_LLAMA, TOKENIZER

from jepa_lightning.data import PairCollator, SampleError, WebDataModule
from jepa_lightning.encoders import TextEncoder
from jepa_lightning.models import VLJEPAModel

GUIDE = (REPO / "docs" / "MODALITIES.md").read_text(encoding="utf-8")
MODALITY, SHARDS = re.findall(r"```python\n(.*?)```", GUIDE, flags=re.DOTALL)


@pytest.fixture
def my_imu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    (tmp_path / "my_imu.py").write_text(MODALITY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("my_imu")


def test_yaml_snippets_parse() -> None:
    for snippet in re.findall(r"```yaml\n(.*?)```", GUIDE, flags=re.DOTALL):
        assert isinstance(yaml.safe_load(snippet), dict)


def test_the_guide_modality_reads_its_shards_and_ignores_padding(
    my_imu: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(SHARDS, {})  # writes data/imu/train with one 400-sample recording
    torch.manual_seed(0)
    model = VLJEPAModel(
        my_imu.IMUEncoder(window=25, width=16),
        TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    ).eval()
    codec = model.x_encoder.codec()
    data = WebDataModule(
        PairCollator(codec, model.text_encoder.codec()),
        val_shards="data/imu/train",
        num_workers=0,
    )
    data.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0)  # type: ignore[assignment]
    batch = next(iter(data.val_dataloader()))
    assert batch.keys == ["walk-0001"] and batch.x.values.shape == (1, 400, 3)
    tokens, mask = model.x_encoder(batch.x)
    assert tokens.shape == (1, 16, 16) and bool(mask.all())
    # Recordings of different lengths: each one's ŝ is the same alone and padded in a batch.
    items = [torch.randn(length, 3) for length in (60, 130, 200)]
    with torch.no_grad():
        together = model.embed_inputs(codec.collate(items))
        for row, item in enumerate(items):
            alone = model.embed_inputs(codec.collate([item]))
            torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)
    # Too short for one token: the codec refuses it, so the pipeline skips the sample.
    short = {"__key__": "s", "__url__": "u", "npy": _npy(torch.zeros(10, 3)), "txt": b"x"}
    with pytest.raises(SampleError, match="expected"):
        PairCollator(codec).decode_sample(short)


def _npy(values: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values.numpy())
    return buffer.getvalue()
