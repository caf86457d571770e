from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_VIT
from lightning.pytorch import Trainer

from jepa_lightning.batch import Batch
from jepa_lightning.cli import main
from jepa_lightning.data import WebDataModule
from jepa_lightning.data.features import METADATA_KEY
from jepa_lightning.data.index import read_shard_index
from jepa_lightning.encoders import ModalityEncoder, VisionEncoder
from jepa_lightning.models.vl_jepa import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.feature_cache import write_feature_cache


def _cache(source: Path, output: Path, encoder: ModalityEncoder, dtype: str = "float16") -> None:
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


def _first_val_batch(shards: Path, model: VLJEPA) -> Batch:
    data = WebDataModule(
        model.batch_collator(), val_shards=str(shards), batch_size=16, num_workers=0
    )
    data.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=1, current_epoch=0
    )
    return next(iter(data.val_dataloader()))


def _loss(model: VLJEPA, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model.compute_losses(BatchForward(model.model, batch))["loss"]


def test_cached_features_give_the_same_loss(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    images = _first_val_batch(shapes_root / "val", model)
    expected = _loss(model, images)
    assert not images.cached
    for dtype, tolerance in (("float32", 1e-6), ("float16", 1e-3)):
        _cache(shapes_root / "val", tmp_path / dtype, model.model.x_encoder, dtype)
        index = read_shard_index(tmp_path / dtype)
        record = index.metadata[METADATA_KEY]
        assert index.num_samples == 64 and record["skipped"] == 0
        assert (record["dtype"], record["num_tokens"], record["dim"]) == (dtype, 16, 32)
        features = _first_val_batch(tmp_path / dtype, model)
        assert features.cached and features.keys == images.keys
        assert features.x.tokens.dtype == getattr(torch, dtype)
        assert features.x.mask.all()  # a fixed-length encoder: no padding
        assert torch.equal(features.caption_tokens()[0], images.caption_tokens()[0])
        torch.testing.assert_close(_loss(model, features), expected, atol=tolerance, rtol=tolerance)


def test_cache_refuses_another_encoder(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    _cache(shapes_root / "val", tmp_path, model.model.x_encoder)
    other_weights = VisionEncoder(TINY_VIT)
    other_std = VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    other_std.load_state_dict(model.model.x_encoder.state_dict())
    for encoder in (other_weights, other_std):
        other = VLJEPA(**dict(tiny_model_kwargs, x_encoder=encoder))
        with pytest.raises(ValueError, match="feature cache made by another X-encoder"):
            _first_val_batch(tmp_path, other)


def test_training_on_features_without_images(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    _cache(shapes_root / "val", tmp_path / "val", model.model.x_encoder)
    data = WebDataModule(
        model.batch_collator(),
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


def test_cli_cache_then_train_on_it(shapes_root: Path, tmp_path: Path) -> None:
    from conftest import TINY_BERT, TINY_LLAMA, TOKENIZER

    config = {
        "seed_everything": 3,
        "model": {
            "class_path": "jepa_lightning.modules.VLJEPA",
            "init_args": {
                "x_encoder": {
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
