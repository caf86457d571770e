from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from jepa_lightning.data.features import (
    METADATA_KEY,
    FeatureCodec,
    check_feature_cache,
    encoder_fingerprint,
    feature_cache_of,
    feature_codec,
)
from jepa_lightning.data.pipeline import Shard


def test_fingerprint_ignores_precision_not_weights(tiny_model_kwargs) -> None:
    encoder = tiny_model_kwargs["x_encoder"]
    fingerprint = encoder_fingerprint(encoder)
    assert encoder_fingerprint(copy.deepcopy(encoder).to(torch.bfloat16)) == fingerprint
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        next(changed.parameters()).add_(0.1)
    assert encoder_fingerprint(changed)["hash"] != fingerprint["hash"]


def _record(tag: str = "a", num_tokens: int | None = 4) -> dict[str, Any]:
    encoder = {"class": "x", "num_tokens": num_tokens}
    return {"fingerprint": {"hash": tag, "encoder": encoder}, "dtype": "float16", "dim": 8}


def test_feature_cache_of_reads_one_kind_of_shards() -> None:
    record = _record()
    features = [Shard(f"f{i}.tar", 2, {METADATA_KEY: record}) for i in range(2)]
    assert feature_cache_of(features, "data.train_shards") == record
    assert feature_cache_of([Shard("i.tar", 2)], "data.train_shards") is None
    with pytest.raises(ValueError, match=r"data\.train_shards mixes feature-cache shards with"):
        feature_cache_of([*features, Shard("i.tar", 2)], "data.train_shards")
    other = Shard("g.tar", 2, {METADATA_KEY: _record("b")})
    with pytest.raises(ValueError, match="mixes feature caches made differently"):
        feature_cache_of([*features, other], "data.train_shards")


def test_check_needs_the_model_fingerprint() -> None:
    record = _record()
    check_feature_cache(record, record["fingerprint"], "data.val_shards")
    with pytest.raises(ValueError, match=r"data\.val_shards .* batch_collator"):
        check_feature_cache(record, None, "data.val_shards")
    with pytest.raises(ValueError, match="made by another X-encoder"):
        check_feature_cache(record, _record("b")["fingerprint"], "data.val_shards")


def test_codec_reads_the_fixed_token_count() -> None:
    codec = feature_codec(_record())
    assert codec == FeatureCodec("float16", dim=8, num_tokens=4)
    tokens = torch.randn(4, 8).half()
    decoded = codec.decode(tokens.numpy().tobytes())
    assert torch.equal(decoded, tokens)
    with pytest.raises(ValueError, match="expected 4 x 16"):
        codec.decode(tokens[:3].numpy().tobytes())  # a truncated member
    batch = codec.collate([decoded, decoded])
    assert batch.tokens.shape == (2, 4, 8) and batch.mask.all()
