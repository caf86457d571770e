"""Packaged tokenizers resolve from any folder; an unknown name lists what ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from transformers import AutoTokenizer

from jepa_lightning.assets import resolve_tokenizer
from jepa_lightning.tools.shapes import (
    COLOURS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapesSpec,
    generate_sample,
    shapes_captions,
)
from jepa_lightning.tools.tokenizer import trim_vocabulary

SHAPES_TOKENIZER = "jepa_lightning:bert-base-uncased-shapes"


def shapes_generator_texts() -> list[str]:
    """Every caption of the shapes generator with all its attributes, its questions and answers."""
    every = ShapesSpec(
        colours=tuple(COLOURS),
        shapes=SHAPES,
        sizes=tuple(SIZES),
        positions=tuple(POSITIONS),
        relations=tuple(RELATIONS),
        image_size=32,
    )
    asking = ShapesSpec(image_size=32, with_queries=True)
    samples = [generate_sample(index, spec=asking) for index in range(64)]
    questions = {meta["query"] for _, _, meta in samples} | {answer for _, answer, _ in samples}
    return shapes_captions(every) + sorted(questions)


def test_packaged_name_resolves_to_the_package_copy() -> None:
    folder = resolve_tokenizer("jepa_lightning:bert-base-uncased")
    assert folder.endswith("jepa_lightning/assets/tokenizers/bert-base-uncased")
    assert resolve_tokenizer("bert-base-uncased") == "bert-base-uncased"  # a hub name as is


def test_unknown_packaged_name_lists_the_shipped_ones() -> None:
    with pytest.raises(FileNotFoundError, match="ships jepa_lightning:bert-base-uncased"):
        resolve_tokenizer("jepa_lightning:gpt2")


def test_default_config_tokenizer_loads_outside_the_repository(tmp_path) -> None:
    script = (
        "from jepa_lightning.encoders import TextEncoder\n"
        "encoder = TextEncoder({'model_type': 'bert', 'hidden_size': 8, 'num_hidden_layers': 1,"
        " 'num_attention_heads': 1, 'intermediate_size': 8},"
        " tokenizer='jepa_lightning:bert-base-uncased')\n"
        "print(encoder.tokenize(['a red circle'])['input_ids'].tolist())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[[101, 1037, 2417, 4418, 102]]"


def test_shapes_tokenizer_is_bert_trimmed_to_the_shapes_generator(tmp_path: Path) -> None:
    """The shipped shapes tokenizer is what trimming BERT's to the generator's texts gives."""
    rebuilt = trim_vocabulary(shapes_generator_texts(), tmp_path / "rebuilt")
    shipped = Path(resolve_tokenizer(SHAPES_TOKENIZER))
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (shipped / name).read_text() == (Path(rebuilt.output) / name).read_text(), name


def test_default_config_words_are_whole_pieces_of_its_tokenizer() -> None:
    """The default config's trimmed tokenizer splits none of its zero-shot words."""
    config = yaml.safe_load((REPO / "configs" / "shapes_tiny.yaml").read_text())
    text_encoder = config["model"]["init_args"]["text_encoder"]["init_args"]
    assert text_encoder["tokenizer"] == SHAPES_TOKENIZER
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(SHAPES_TOKENIZER))
    (zero_shot,) = [
        callback["init_args"]
        for callback in config["trainer"]["callbacks"]
        if callback["class_path"].endswith("ZeroShotEvaluator")
    ]
    texts = [
        template.format(name)
        for task, names in zero_shot["class_names"].items()
        for name in (names.values() if isinstance(names, dict) else names)
        for template in zero_shot["templates"][task]
    ]
    for text in texts:
        assert tokenizer.tokenize(text) == text.split(), text
