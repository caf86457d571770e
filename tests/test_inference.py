"""The standalone model: an export loads without Lightning and embeds as the LightningModule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_export import QUERIES, TEXTS, images, trained_like  # noqa: F401 (fixture)

from jepa_lightning.export import export_model
from jepa_lightning.inference import PretrainedVLJEPA, load_model

# Embeds with the standalone model in a fresh interpreter; reports the Lightning modules imported.
SCRIPT = """
import json, sys
import torch
from jepa_lightning.inference import PretrainedVLJEPA
folder, inputs, output = sys.argv[1:]
torch.set_num_threads(1)
model = PretrainedVLJEPA.from_pretrained(folder, batch_size=2)
data = torch.load(inputs)
torch.save({
    "texts": model.encode_texts(data["texts"]),
    "predicted": model.encode_images(data["images"]),
    "predicted_query": model.encode_images(data["images"], queries=data["queries"]),
    "temperature": model.temperature,
}, output)
lightning = ("lightning", "pytorch_lightning")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in lightning)))
"""


@pytest.fixture
def exported(trained_like, tmp_path) -> Path:  # noqa: F811
    return Path(export_model(trained_like, str(tmp_path / "export")))


def test_standalone_model_reproduces_the_lightning_module(trained_like, exported, tmp_path):  # noqa: F811
    pixels = images()
    torch.save({"texts": TEXTS, "queries": QUERIES, "images": pixels}, tmp_path / "inputs.pt")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(exported),
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
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # no Lightning at run time
    got = torch.load(tmp_path / "out.pt")
    module = trained_like.eval()
    with torch.no_grad():  # the LightningModule's own embeddings, as validation computes them
        expected = {
            "texts": module.model.embed_texts(TEXTS),
            "predicted": module.model.embed_inputs(pixels),
            "predicted_query": module.model.embed_inputs(pixels, queries=QUERIES),
        }
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=0, msg=key)
    assert got["temperature"] == pytest.approx(module.objectives["caption"].temperature)


def test_images_as_files_pil_or_tensors_embed_alike(exported, tmp_path) -> None:
    model = PretrainedVLJEPA.from_pretrained(str(exported))
    pixels = images()  # (3, 3, 32, 32) uint8, the X-encoder's size
    paths = []
    for index, image in enumerate(pixels):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])  # lossless
    reference = model.encode_images(pixels)
    pil = [Image.open(path) for path in paths]
    for inputs in (paths, [str(p) for p in paths], pil, list(pixels), pixels.float() / 255):
        torch.testing.assert_close(model.encode_images(inputs), reference, atol=1e-5, rtol=0)
    # Another size goes through the codec's resize and centre crop, as in training.
    big = torch.nn.functional.interpolate(pixels.float(), size=(48, 64)).to(torch.uint8)
    resized = [model._codec().transform(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in big]
    torch.testing.assert_close(
        model.encode_images(list(big)), model.encode_images(torch.stack(resized))
    )
    assert model.encode_images([]).shape == (0, 16)


def test_batching_does_not_change_the_embeddings(exported) -> None:
    model = PretrainedVLJEPA.from_pretrained(str(exported))
    pixels = images()
    torch.testing.assert_close(
        model.encode_images(pixels, batch_size=1), model.encode_images(pixels, batch_size=3)
    )
    torch.testing.assert_close(
        model.encode_texts(TEXTS, batch_size=2), model.encode_texts(TEXTS, batch_size=64)
    )


def test_answer_picks_the_nearest_candidate(exported) -> None:
    model = PretrainedVLJEPA.from_pretrained(str(exported))
    pixels = images()
    questions = ["what colour is it?", "what shape is it?", "how many?"]
    options = [["red", "green", "blue"], ["circle", "square"], ["one", "two"]]
    scores = model.score_answers(pixels, questions, options)
    predicted = model.encode_images(pixels, queries=questions)
    for row, choices, got in zip(predicted, options, scores, strict=True):
        torch.testing.assert_close(got, model.encode_texts(choices) @ row)  # brute force
    answers = model.answer(pixels, questions, options)
    assert answers == [choices[int(s.argmax())] for choices, s in zip(options, scores, strict=True)]
    shared = model.answer(pixels, questions, ["red", "green"])
    assert set(shared) <= {"red", "green"}
    with pytest.raises(ValueError, match="2 candidate lists for 3 questions"):
        model.answer(pixels, questions, options[:2])
    with pytest.raises(ValueError, match="at least one candidate"):
        model.answer(pixels, questions, [["a"], [], ["b"]])


def test_save_pretrained_round_trip_and_dtype(exported, tmp_path) -> None:
    model = PretrainedVLJEPA.from_pretrained(str(exported))
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert {"model.safetensors", "config.json", "tokenizer", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    again = PretrainedVLJEPA.from_pretrained(str(folder))
    assert again.temperature == pytest.approx(model.temperature)
    torch.testing.assert_close(again.encode_texts(TEXTS), model.encode_texts(TEXTS))
    half = PretrainedVLJEPA.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    embedded = half.encode_images(images())
    assert embedded.dtype == torch.float32  # returned as float32, on the CPU
    torch.testing.assert_close(embedded, model.encode_images(images()), atol=0.1, rtol=0)


def test_load_model_reads_exports_and_refuses_missing_paths(exported, tmp_path) -> None:
    assert isinstance(load_model(str(exported)), PretrainedVLJEPA)
    with pytest.raises(FileNotFoundError, match="no checkpoint or export folder"):
        load_model(str(tmp_path / "missing.ckpt"))
