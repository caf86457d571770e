"""The offline probe command: attentive, linear and k-NN probes of a frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_VIT

from jepa_lightning.callbacks.probes import knn_predict
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.tools.probe import AttentiveProbe, encode_shards, probe_encoder

TASKS = {"shape": ["circle", "square", "triangle"], "colour": ["red", "green", "blue", "yellow"]}


def test_attentive_probe_pools_tokens_in_any_order() -> None:
    torch.manual_seed(0)
    probe = AttentiveProbe(dim=8, num_classes=3, num_heads=2).eval()
    tokens = torch.randn(4, 5, 8)
    logits = probe(tokens)
    assert logits.shape == (4, 3)
    assert torch.allclose(probe(tokens[:, torch.randperm(5)]), logits, atol=1e-5)


def test_probe_results_and_knn_against_the_features(shapes_root, tmp_path) -> None:
    output = tmp_path / "probe.json"
    results = probe_encoder(
        TINY_VIT,
        str(shapes_root / "train"),
        str(shapes_root / "val"),
        tasks=TASKS,
        kinds=["knn", "linear", "attentive"],
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        epochs=2,
        k=5,
        num_heads=2,
        num_workers=0,
        output=str(output),
    )
    assert set(results) == {"knn", "linear", "attentive"}
    for scores in results.values():
        assert set(scores) == {"shape", "colour", "mean"}
        assert all(0.0 <= value <= 1.0 for value in scores.values())
        assert scores["mean"] == pytest.approx((scores["shape"] + scores["colour"]) / 2)
    saved = json.loads(output.read_text())
    assert saved["results"] == results and saved["train_samples"] == 256
    # The k-NN figure is knn_predict on the same frozen features (seeded random init).
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    train, train_labels = encode_shards(encoder, str(shapes_root / "train"), TASKS, num_workers=0)
    val, val_labels = encode_shards(encoder, str(shapes_root / "val"), TASKS, num_workers=0)
    predicted = knn_predict(val.mean(1), train.mean(1), train_labels[:, 0], 3, k=5)
    labelled = val_labels[:, 0] >= 0
    expected = (predicted[labelled] == val_labels[labelled, 0]).float().mean()
    assert results["knn"]["shape"] == pytest.approx(float(expected))


def test_unknown_kind_is_refused(shapes_root) -> None:
    with pytest.raises(ValueError, match="unknown probe kinds"):
        probe_encoder(TINY_VIT, str(shapes_root), str(shapes_root), kinds=["svm"])  # type: ignore[list-item]
