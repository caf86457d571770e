from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_VIT, tiny_shapes_data
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from jepa_lightning.batch import Batch
from jepa_lightning.cli import main
from jepa_lightning.data import WebDataModule
from jepa_lightning.data.features import METADATA_KEY, encoder_fingerprint
from jepa_lightning.data.index import read_shard_index
from jepa_lightning.encoders import ModalityEncoder, VisionEncoder
from jepa_lightning.encoders.video import VideoCodec
from jepa_lightning.models.vl_jepa import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.feature_cache import ensure_feature_cache, write_feature_cache


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


def _ensure(source: Path, output: Path, encoder: ModalityEncoder, dtype: str = "float16") -> str:
    return ensure_feature_cache(
        str(source), str(output), encoder, dtype=dtype, batch_size=32, num_workers=0, device="cpu"
    )


def _index_written_at(folder: Path) -> int:
    return (folder / "index.json").stat().st_mtime_ns


def test_ensure_writes_once_and_again_when_its_inputs_change(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "images"
    shutil.copytree(shapes_root / "val", source)
    encoder = VLJEPA(**tiny_model_kwargs).model.x_encoder
    cache = tmp_path / "cache"
    assert _ensure(source, cache, encoder) == str(cache)
    assert read_shard_index(cache).num_samples == 64

    def touch_shard() -> None:
        os.utime(next(source.glob("*.tar")), ns=(1, 1))

    def remove_cached_shard() -> None:
        next(cache.glob("*.tar")).unlink()

    changes: dict[str, tuple[Callable[[], object], Callable[[], str]]] = {
        "the X-encoder changed": (
            lambda: None,
            lambda: _ensure(source, cache, VisionEncoder(TINY_VIT)),
        ),
        "its dtype is float16, not bfloat16": (
            lambda: None,
            lambda: _ensure(source, cache, encoder, dtype="bfloat16"),
        ),
        "a training shard was rewritten": (touch_shard, lambda: _ensure(source, cache, encoder)),
        "its index is unusable": (remove_cached_shard, lambda: _ensure(source, cache, encoder)),
    }
    for reason, (change, ensure) in changes.items():
        _ensure(source, cache, encoder)  # back to the current cache
        written = _index_written_at(cache)
        _ensure(source, cache, encoder)
        assert _index_written_at(cache) == written  # current: read, not rewritten
        change()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            ensure()
        assert _index_written_at(cache) != written, reason
        assert f"({reason}" in caplog.text
    _ensure(source, cache, encoder)
    record = read_shard_index(cache).metadata[METADATA_KEY]
    assert record["dtype"] == "float16" and record["fingerprint"] == encoder_fingerprint(encoder)
    assert read_shard_index(cache).num_samples == 64


def test_ensure_refuses_a_training_encoder_and_other_shards(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    encoder = VLJEPA(**tiny_model_kwargs).model.x_encoder
    with pytest.raises(ValueError, match="only a frozen X-encoder's tokens can be cached"):
        _ensure(shapes_root / "val", tmp_path / "cache", VisionEncoder(TINY_VIT, frozen=False))
    with pytest.raises(ValueError, match="not a feature cache; refusing to overwrite"):
        _ensure(shapes_root / "val", shapes_root / "train", encoder)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(next((shapes_root / "val").glob("*.tar")), loose / "mine.tar")
    with pytest.raises(ValueError, match=r"holds other shards \(mine.tar\)"):
        _ensure(shapes_root / "val", loose, encoder)
    with pytest.raises(FileNotFoundError):
        _ensure(tmp_path / "missing", tmp_path / "cache", encoder)
    assert read_shard_index(shapes_root / "train").num_samples == 256  # untouched


class _RecordBatches(Callback):
    def __init__(self) -> None:
        self.cached: dict[str, set[bool]] = {"train": set(), "val": set()}

    def on_train_batch_start(self, trainer: Trainer, module: Any, batch: Batch, *_: Any) -> None:
        self.cached["train"].add(batch.cached)

    def on_validation_batch_start(
        self, trainer: Trainer, module: Any, batch: Batch, *_: Any
    ) -> None:
        self.cached["val"].add(batch.cached)


def test_data_module_trains_on_its_feature_cache(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    cache = tmp_path / "train-features"
    data = tiny_shapes_data(shapes_root, model, feature_cache=str(cache))
    batches = _RecordBatches()
    trainer = Trainer(
        max_steps=3,
        limit_val_batches=1,
        val_check_interval=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[batches],
        default_root_dir=tmp_path,
    )
    trainer.validate(model, data)
    assert not cache.exists()  # only fitting reads the training split
    trainer.fit(model, data)
    assert trainer.global_step == 3
    # Training reads the cached tokens; validation the images (callbacks may show them).
    assert batches.cached == {"train": {True}, "val": {False}}, batches.cached
    index = read_shard_index(cache)
    assert index.num_samples == 256
    assert index.metadata[METADATA_KEY]["fingerprint"] == model.batch_collator().x_fingerprint


def test_data_module_feature_cache_errors(
    shapes_root: Path, tiny_model_kwargs, tmp_path: Path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="data.feature_cache_dtype must be one of"):
        tiny_shapes_data(shapes_root, model, feature_cache=cache, feature_cache_dtype="int8")
    with pytest.raises(ValueError, match="not weighted sources"):
        WebDataModule(
            train_shards=[str(shapes_root / "train")] * 2,
            train_weights=[1.0, 1.0],
            feature_cache=cache,
        )
    # Outside Trainer.fit there is no model to take the X-encoder from.
    with pytest.raises(ValueError, match="run it through Trainer.fit"):
        tiny_shapes_data(shapes_root, model, feature_cache=cache).prepare_data()
    # Random clip starts in training: a cache would fix one clip per sample.
    clips = tiny_shapes_data(shapes_root, model, feature_cache=cache)
    clips.collator = replace(model.batch_collator(), x=VideoCodec(32, num_frames=2))
    clips.trainer = SimpleNamespace(  # type: ignore[assignment]
        lightning_module=model, state=SimpleNamespace(fn=TrainerFn.FITTING)
    )
    with pytest.raises(ValueError, match="training inputs are random"):
        clips.prepare_data()
    training = VLJEPA(**dict(tiny_model_kwargs, x_encoder=VisionEncoder(TINY_VIT, frozen=False)))
    data = tiny_shapes_data(shapes_root, training, feature_cache=cache)
    trainer = Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="only a frozen X-encoder's tokens can be cached"):
        trainer.fit(training, data)
    assert not Path(cache).exists()
