"""evaluate writes CLIP_benchmark's JSON layout, with values that brute force confirms."""

from __future__ import annotations

import json

import pytest
from inference_data import shapes_pngs, tiny_export

from jepa_lightning.cli import main
from jepa_lightning.evaluate import BENCHMARK_KEYS, evaluate
from jepa_lightning.inference import PretrainedVLJEPA
from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards

# The layout of LAION's CLIP_benchmark result files (clip_benchmark/cli.py's dump).
CLIP_BENCHMARK_KEYS = {"dataset", "model", "pretrained", "task", "metrics", "language"}
RETRIEVAL_KEYS = {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)}
CLASSIFICATION_KEYS = {"acc1", "acc5", "mean_per_class_recall"}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    return tiny_export(tmp_path_factory.mktemp("evaluate") / "export")


def test_retrieval_json_has_clip_benchmark_keys(export, tmp_path) -> None:
    images = shapes_pngs(tmp_path / "pngs", 30)
    output = tmp_path / "result.json"
    main(["evaluate", export, str(tmp_path / "pngs"), "--output", str(output)])
    result = json.loads(output.read_text())
    assert set(result) == CLIP_BENCHMARK_KEYS == set(BENCHMARK_KEYS)
    assert result["task"] == "zeroshot_retrieval" and result["dataset"] == "pngs"
    assert set(result["metrics"]) == RETRIEVAL_KEYS
    # Brute force: text->image R@1, a hit when the best image has the query's caption.
    model = PretrainedVLJEPA.from_pretrained(export)
    captions = [image["caption"] for image in images]
    scores = model.encode_texts(captions) @ model.encode_images([i["path"] for i in images]).T
    hits = [
        captions[int(row.argmax())] == caption
        for row, caption in zip(scores, captions, strict=True)
    ]
    assert result["metrics"]["image_retrieval_recall@1"] == pytest.approx(sum(hits) / len(hits))
    for k in (1, 5, 10):
        assert 0.0 <= result["metrics"][f"text_retrieval_recall@{k}"] <= 1.0


def test_classification_from_shard_labels(export, tmp_path) -> None:
    shards = write_shapes_shards(str(tmp_path / "shards"), 24, ShapesSpec(), samples_per_shard=10)
    colours = ["red", "green", "blue", "yellow"]
    result = evaluate(
        export,
        shards,
        task="zeroshot_classification",
        output=str(tmp_path / "c.json"),
        class_names=colours,
        templates=["a {} shape"],
        label="colour",
    )
    assert set(result) == CLIP_BENCHMARK_KEYS and set(result["metrics"]) == CLASSIFICATION_KEYS
    assert result["metrics"]["acc5"] == 1.0  # 4 classes: the top 5 holds all of them
    with pytest.raises(ValueError, match="are not in class_names"):
        evaluate(
            export,
            shards,
            "zeroshot_classification",
            str(tmp_path / "x.json"),
            class_names=["red", "green"],
            label="colour",
        )


def test_vqa_accuracy_and_chance(export, tmp_path) -> None:
    spec = ShapesSpec(with_queries=True)
    shards = write_shapes_shards(str(tmp_path / "qa"), 40, spec, samples_per_shard=20)
    result = evaluate(export, shards, task="vqa", output=str(tmp_path / "v.json"))
    metrics = result["metrics"]
    assert metrics["chance_count"] == pytest.approx(0.5)
    assert metrics["chance_colour"] == pytest.approx(0.25)
    assert 0.0 <= metrics["vqa_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="no sample has a question"):
        plain = write_shapes_shards(str(tmp_path / "plain"), 4, ShapesSpec())
        evaluate(export, plain, task="vqa", output=str(tmp_path / "p.json"))
