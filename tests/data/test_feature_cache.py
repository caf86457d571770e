from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_VIT
from lightning.pytorch import Trainer

from jepa_lightning.cli import main
from jepa_lightning.data import WebDataModule
from jepa_lightning.data.feature_cache import (
    METADATA_KEY,
    encoder_fingerprint,
    write_feature_cache,
)
from jepa_lightning.data.shards import read_shard_index
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.modules import VLJEPA


def _cache(source: Path, output: Path, encoder: VisionEncoder, dtype: str = "float16") -> None:
    write_feature_cache(
        str(source),
        str(output),
        encoder,
        dtype=dtype,
        batch_size=16,
        samples_per_shard=32,
        num_workers=0,
        device="cpu",
        progress=False,
    )


def _first_val_batch(shards: Path, model: VLJEPA) -> dict[str, Any]:
    data = WebDataModule(val_shards=str(shards), batch_size=16, num_workers=0)
    data.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=1, lightning_module=model, current_epoch=0
    )
    return next(iter(data.val_dataloader()))


def test_cached_features_give_the_same_loss(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    images = _first_val_batch(shapes_root / "val", model)
    with torch.no_grad():
        expected = model.compute_losses(images)["loss"]
    for dtype, tolerance in (("float32", 1e-6), ("float16", 1e-3)):
        _cache(shapes_root / "val", tmp_path / dtype, model.vision_encoder, dtype)
        index = read_shard_index(tmp_path / dtype)
        record = index.metadata[METADATA_KEY]
        assert index.num_samples == 64 and record["skipped"] == 0
        assert (record["dtype"], record["num_tokens"], record["dim"]) == (dtype, 16, 32)
        features = _first_val_batch(tmp_path / dtype, model)
        assert "inputs" not in features and features["keys"] == images["keys"]
        assert features["features"].dtype == getattr(torch, dtype)
        assert torch.equal(features["caption_ids"], images["caption_ids"])
        with torch.no_grad():
            loss = model.compute_losses(features)["loss"]
        torch.testing.assert_close(loss, expected, atol=tolerance, rtol=tolerance)


def test_cache_refuses_another_encoder(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    _cache(shapes_root / "val", tmp_path, model.vision_encoder)
    other_weights = dict(tiny_model_kwargs, vision_encoder=VisionEncoder(TINY_VIT))
    other_std = VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    other_std.load_state_dict(model.vision_encoder.state_dict())
    for encoder in (other_weights["vision_encoder"], other_std):
        other = VLJEPA(**dict(tiny_model_kwargs, vision_encoder=encoder))
        with pytest.raises(ValueError, match="feature cache made by another X-encoder"):
            _first_val_batch(tmp_path, other)


def test_fingerprint_ignores_precision_not_weights(tiny_model_kwargs) -> None:
    encoder = tiny_model_kwargs["vision_encoder"]
    fingerprint = encoder_fingerprint(encoder)
    assert encoder_fingerprint(copy.deepcopy(encoder).to(torch.bfloat16)) == fingerprint
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        next(changed.parameters()).add_(0.1)
    assert encoder_fingerprint(changed)["hash"] != fingerprint["hash"]


def test_cli_cache_then_train_on_it(shapes_root: Path, tmp_path: Path) -> None:
    from conftest import TINY_BERT, TINY_LLAMA, TOKENIZER

    config = {
        "seed_everything": 3,
        "model": {
            "class_path": "jepa_lightning.modules.VLJEPA",
            "init_args": {
                "vision_encoder": {
                    "class_path": "jepa_lightning.encoders.VisionEncoder",
                    "init_args": {"model": TINY_VIT},
                },
                "text_encoder": {
                    "class_path": "jepa_lightning.encoders.TextEncoder",
                    "init_args": {"model": TINY_BERT, "tokenizer": TOKENIZER},
                },
                "embed_dim": 16,
                "predictor_lm": TINY_LLAMA,
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    for split in ("train", "val"):
        main(
            [
                "data",
                "cache",
                str(path),
                str(shapes_root / split),
                str(tmp_path / "features" / split),
                "--num_workers=0",
                "--device=cpu",
            ]
        )
    record = json.loads((tmp_path / "features" / "train" / "index.json").read_text())
    assert record["metadata"][METADATA_KEY]["fingerprint"]["encoder"]["source"] == TINY_VIT
    # The random-init encoder that `fit` builds from the same config is the cached one.
    main(
        [
            "fit",
            f"--config={path}",
            "--data=jepa_lightning.data.WebDataModule",
            f"--data.train_shards={tmp_path / 'features' / 'train'}",
            f"--data.val_shards={tmp_path / 'features' / 'val'}",
            "--data.batch_size=16",
            "--data.num_workers=0",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )


def test_training_on_features_without_images(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    _cache(shapes_root / "val", tmp_path / "val", model.vision_encoder)
    data = WebDataModule(
        train_shards=str(tmp_path / "val"),
        val_shards=str(tmp_path / "val"),
        batch_size=16,
        num_workers=0,
    )
    trainer = Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    assert trainer.global_step == 3
