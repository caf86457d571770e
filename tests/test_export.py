"""Exported models load without Lightning and embed as the VLJEPA they came from."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, TOKENIZER
from safetensors import safe_open

from jepa_lightning.export import export_checkpoint, export_model, load_exported
from jepa_lightning.models import VLJEPAModel
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
        "predicted": model.embed_inputs(data["images"]),
        "predicted_query": model.embed_inputs(data["images"], queries=data["queries"]),
        "training": model.training,
    }
torch.save(result, output)
lightning = ("lightning", "pytorch_lightning")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in lightning)))
"""


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (len(TEXTS), 3, 32, 32), dtype=torch.uint8, generator=generator)


def reference(core: VLJEPAModel, pixels: torch.Tensor) -> dict[str, Any]:
    """The model core's own embeddings of TEXTS, of ``pixels``, and of ``pixels`` with QUERIES."""
    core.eval()
    with torch.no_grad():
        return {
            "texts": core.embed_texts(TEXTS),
            "predicted": core.embed_inputs(pixels),
            "predicted_query": core.embed_inputs(pixels, queries=QUERIES),
        }


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("texts", "predicted", "predicted_query"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)


@pytest.fixture
def trained_like(tiny_model_kwargs) -> VLJEPA:
    torch.manual_seed(0)
    model = VLJEPA(**tiny_model_kwargs)
    with torch.no_grad():  # not the initial values, so that a lost tensor shows
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
        model.objectives["caption"].loss.logit_scale.fill_(3.0)
    return model


def test_export_loads_without_lightning_and_embeds_the_same(trained_like, tmp_path) -> None:
    folder = Path(export_model(trained_like, str(tmp_path / "export")))
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tokenizer"}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert {name.split(".")[0] for name in names} == {
        "x_encoder",
        "text_encoder",
        "predictor",
        "text_projection",
    }
    assert names == set(trained_like.model.state_dict())  # the whole core, X-encoder included
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 2
    assert config["embed_dim"] == 16
    assert config["temperature"] == pytest.approx(math.exp(-3.0), rel=1e-6)
    assert config["x_encoder"]["class_path"] == "jepa_lightning.encoders.VisionEncoder"
    assert config["x_encoder"]["describe"] == trained_like.model.x_encoder.describe()
    assert config["x_encoder"]["describe"]["source"]["model_type"] == "vit"
    assert config["x_encoder"]["describe"]["num_tokens"] == 16
    assert config["text_encoder"]["frozen"] is False

    pixels = images()
    torch.save({"texts": TEXTS, "queries": QUERIES, "images": pixels}, tmp_path / "inputs.pt")
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
    got = torch.load(tmp_path / "out.pt")
    assert got["training"] is False
    assert_same(got, reference(trained_like.model, pixels))


def test_export_of_the_model_core_reloads_in_process(trained_like, tmp_path) -> None:
    folder = export_model(trained_like.model, str(tmp_path / "export"))
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["temperature"] is None  # a bare core has no objective
    exported = load_exported(folder)
    assert isinstance(exported, VLJEPAModel) and not exported.training
    assert exported.x_encoder.frozen and not any(
        p.requires_grad for p in exported.x_encoder.parameters()
    )
    pixels = images()
    assert_same(reference(exported, pixels), reference(trained_like.model, pixels))


def test_embed_inputs_checks_one_query_per_row(trained_like, tmp_path) -> None:
    exported = load_exported(export_model(trained_like, str(tmp_path / "export")))
    with pytest.raises(ValueError, match="2 queries for 3 inputs"):
        exported.embed_inputs(images(), ["a", "b"])


def test_load_refuses_another_format_version(trained_like, tmp_path) -> None:
    folder = Path(export_model(trained_like, str(tmp_path / "export")))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    with pytest.raises(ValueError, match="version 2"):
        load_exported(str(folder))


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
            "--model.init_args.x_encoder.init_args.model.image_size=32",
            f"--model.init_args.text_encoder.init_args.tokenizer={TOKENIZER}",
        ]
    )
    checkpoint = str(tmp_path / "checkpoints" / "last.ckpt")
    exported = load_exported(export_checkpoint(checkpoint, str(tmp_path / "export")))
    model = VLJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
    pixels = images()
    assert_same(reference(exported, pixels), reference(model.model, pixels))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["temperature"] == pytest.approx(model.objectives["caption"].temperature)


def test_export_checkpoint_without_encoders_asks_for_the_model(trained_like, tmp_path) -> None:
    # A model built in Python keeps its encoder modules out of its hyperparameters.
    assert "x_encoder" not in trained_like.hparams
    path = tmp_path / "python.ckpt"
    torch.save(
        {"hyper_parameters": dict(trained_like.hparams), "state_dict": trained_like.state_dict()},
        path,
    )
    with pytest.raises(ValueError, match="export_model"):
        export_checkpoint(str(path), str(tmp_path / "export"))
