"""classify: each image gets the class nearest to it (brute force), CSV and table."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from inference_data import shapes_pngs, tiny_export

from jepa_lightning.classify import class_embeddings, classify
from jepa_lightning.cli import main
from jepa_lightning.inference import PretrainedVLJEPA

COLOURS = ["red", "green", "blue", "yellow"]
TEMPLATES = ["a {} circle", "a {} square", "a {} triangle"]


def test_classes_are_the_nearest_prompt_ensembles(tmp_path, capsys) -> None:
    export = tiny_export(tmp_path / "export")
    images = shapes_pngs(tmp_path / "pngs", 12, captions=False)
    output = tmp_path / "classes.csv"
    main(
        [
            "classify",
            export,
            str(tmp_path / "pngs"),
            "--class_names",
            "[red, green, blue, yellow]",
            "--templates",
            '["a {} circle", "a {} square", "a {} triangle"]',
            "--output",
            str(output),
            "--top_k",
            "2",
        ]
    )
    assert "zero-shot classes of 12 images" in capsys.readouterr().out
    rows = list(csv.DictReader(output.open()))
    model = PretrainedVLJEPA.from_pretrained(export)
    texts = model.encode_texts([t.format(c) for c in COLOURS for t in TEMPLATES])
    classes = F.normalize(texts.view(4, 3, -1).mean(dim=1), dim=-1)  # brute force
    torch.testing.assert_close(class_embeddings(model, COLOURS, TEMPLATES), classes)
    scores = model.encode_images([image["path"] for image in images]) @ classes.T
    assert [row["path"] for row in rows] == [image["path"] for image in images]
    for row, expected in zip(rows, scores, strict=True):
        top = expected.topk(2)
        assert [row["class"], row["class_2"]] == [COLOURS[i] for i in top.indices]
        assert float(row["score"]) == pytest.approx(float(top.values[0]), abs=1e-5)


def test_bad_class_arguments(tmp_path) -> None:
    export = tiny_export(tmp_path / "export")
    shapes_pngs(tmp_path / "pngs", 1)
    with pytest.raises(ValueError, match="needs --class_names"):
        classify(export, str(tmp_path / "pngs"))
    with pytest.raises(ValueError, match="every template needs"):
        classify(export, str(tmp_path / "pngs"), ["a"], templates=["no slot"])
