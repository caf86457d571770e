"""Exported models load without Lightning and embed as the VLJEPA they came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TOKENIZER
from safetensors import safe_open

from jepa_lightning.export import export_checkpoint, export_model, load_exported
from jepa_lightning.modules import VLJEPA

TEXTS = ["a small red circle on the left", "a big blue square", "two shapes"]
QUERIES = ["what colour is it?", "", "where is the square?"]

# Loads the export in a fresh interpreter, embeds, and reports the Lightning modules imported.
LOAD_SCRIPT = """
import json, sys
import torch
from jepa_lightning.export import load_exported
folder, inputs, output = sys.argv[1:]
torch.set_num_threads(1)
model = load_exported(folder)
data = torch.load(inputs)
with torch.no_grad():
    result = {
        "texts": model.embed_texts(data["texts"]),
        "predicted": model.predict(data["visual"]),
        "predicted_query": model.predict(data["visual"], data["queries"]),
        "temperature": model.temperature,
    }
torch.save(result, output)
lightning = ("lightning", "pytorch_lightning")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in lightning)))
"""


def reference(model: VLJEPA, visual: torch.Tensor) -> dict[str, Any]:
    """The VLJEPA's own embeddings of TEXTS, of ``visual``, and of ``visual`` with QUERIES."""
    model.eval()
    texts = model.text_encoder.tokenize(TEXTS)
    queries = model.text_encoder.tokenize([q or "" for q in QUERIES])
    has_query = torch.tensor([bool(q) for q in QUERIES])
    query_mask = queries["attention_mask"].bool() & has_query[:, None]
    with torch.no_grad():
        return {
            "texts": model.embed_texts(texts["input_ids"], texts["attention_mask"]),
            "predicted": F.normalize(model._predict(visual, None, None), dim=-1),
            "predicted_query": F.normalize(
                model._predict(visual, queries["input_ids"], query_mask), dim=-1
            ),
            "temperature": model.caption_loss.temperature,
        }


def visual_tokens(model: VLJEPA) -> torch.Tensor:
    encoder = model.vision_encoder
    images = torch.randint(0, 256, (len(TEXTS), 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        return encoder(images).tokens


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("texts", "predicted", "predicted_query"):
        torch.testing.assert_close(got[key], expected[key], msg=key)
    assert got["temperature"] == pytest.approx(expected["temperature"], rel=1e-6)


@pytest.fixture
def trained_like(tiny_model_kwargs) -> VLJEPA:
    torch.manual_seed(0)
    model = VLJEPA(**tiny_model_kwargs)
    with torch.no_grad():  # not the initial values, so that a lost tensor shows
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
        model.caption_loss.logit_scale.fill_(3.0)
    return model


def test_export_loads_without_lightning_and_embeds_the_same(trained_like, tmp_path) -> None:
    folder = Path(export_model(trained_like, str(tmp_path / "export")))
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tokenizer"}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        owners = {key.split(".")[0] for key in weights.keys()}
    assert owners == {"text_encoder", "predictor", "text_projection", "logit_scale"}
    config = json.loads((folder / "config.json").read_text())
    assert config["embed_dim"] == 16
    assert config["vision_encoder"]["source"]["model_type"] == "vit"
    assert config["vision_encoder"]["num_tokens"] == 16

    visual = visual_tokens(trained_like)
    torch.save({"texts": TEXTS, "queries": QUERIES, "visual": visual}, tmp_path / "inputs.pt")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_SCRIPT,
            str(folder),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    assert_same(torch.load(tmp_path / "out.pt"), reference(trained_like, visual))


def test_predict_checks_one_query_per_row(trained_like, tmp_path) -> None:
    exported = load_exported(export_model(trained_like, str(tmp_path / "export")))
    with pytest.raises(ValueError, match="2 queries for 3 rows"):
        exported.predict(visual_tokens(trained_like), ["a", "b"])


def test_export_checkpoint_from_the_cli(shapes_root, tmp_path) -> None:
    from jepa_lightning.cli import main

    main(
        [
            "fit",
            f"--config={REPO / 'configs' / 'shapes_tiny.yaml'}",
            "--trainer.max_steps=1",
            "--trainer.val_check_interval=1",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.init_args.root={shapes_root}",
            "--data.init_args.train_samples=256",
            "--data.init_args.val_samples=64",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=16",
            "--data.init_args.num_workers=0",
            "--model.init_args.vision_encoder.init_args.model.image_size=32",
            f"--model.init_args.text_encoder.init_args.tokenizer={TOKENIZER}",
        ]
    )
    checkpoint = str(tmp_path / "checkpoints" / "last.ckpt")
    exported = load_exported(export_checkpoint(checkpoint, str(tmp_path / "export")))
    model = VLJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
    visual = visual_tokens(model)
    with torch.no_grad():
        got = {
            "texts": exported.embed_texts(TEXTS),
            "predicted": exported.predict(visual),
            "predicted_query": exported.predict(visual, QUERIES),
            "temperature": exported.temperature,
        }
    assert_same(got, reference(model, visual))


def test_export_checkpoint_without_encoders_asks_for_the_model(trained_like, tmp_path) -> None:
    # A model built in Python keeps its encoder modules out of its hyperparameters.
    assert "vision_encoder" not in trained_like.hparams
    path = tmp_path / "python.ckpt"
    torch.save(
        {"hyper_parameters": dict(trained_like.hparams), "state_dict": trained_like.state_dict()},
        path,
    )
    with pytest.raises(ValueError, match="export_model"):
        export_checkpoint(str(path), str(tmp_path / "export"))
