"""YDecoderModule: trains the decoder on a frozen VL-JEPA; checkpoints, export, decode, caption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_DECODER_LM, tiny_shapes_data
from lightning.pytorch import Trainer
from test_export import trained_like  # noqa: F401 (fixture)

from jepa_lightning.batch import Batch
from jepa_lightning.cli import main
from jepa_lightning.export import export_model
from jepa_lightning.inference import PretrainedVLJEPA
from jepa_lightning.modules.y_decoder import YDecoderModule, export_decoder_checkpoint


@pytest.fixture
def vl_jepa_export(trained_like, tmp_path) -> str:  # noqa: F811
    return export_model(trained_like, str(tmp_path / "vl-jepa"))


def decoder_module(source: str, **kwargs) -> YDecoderModule:
    torch.manual_seed(0)
    settings = {"prefix_length": 2, "max_length": 12, "warmup_steps": 1, **kwargs}
    return YDecoderModule(source, lm=TINY_DECODER_LM, **settings)


def fit(module: YDecoderModule, shapes_root: Path, tmp_path: Path, steps: int = 3) -> Trainer:
    trainer = Trainer(
        max_steps=steps,
        limit_val_batches=1,
        val_check_interval=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, tiny_shapes_data(shapes_root, module, batch_size=8))
    return trainer


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("condition", ["predicted", "target", "both"])
def test_training_step_trains_the_decoder_only(condition, vl_jepa_export) -> None:
    module = decoder_module(vl_jepa_export, condition=condition)
    module.train()
    assert not module.vl_jepa.training  # the frozen model stays in eval mode
    assert all(not p.requires_grad for p in module.vl_jepa.parameters())
    groups = module.parameter_groups()
    trained = {id(p) for group in groups for p in group["params"]}
    assert trained == {id(p) for p in module.decoder.parameters()}
    captions = ["a small red circle on the left", "a large blue square"]
    tokens = module.vl_jepa.model.text_encoder.tokenize(captions)
    batch = Batch(
        x=torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
        pair_ids=torch.arange(2),
        keys=["a", "b"],
        captions=captions,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )
    predicted, target = module.embeddings(batch)
    expected = {"predicted": predicted, "target": target, "both": torch.cat([predicted, target])}
    loss = module.training_step(batch, 0)
    reference = module.decoder(expected[condition], captions * (2 if condition == "both" else 1))
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert module.decoder.projection[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.vl_jepa.parameters())


def test_fit_checkpoint_export_and_decode(vl_jepa_export, shapes_root, tmp_path) -> None:
    module = decoder_module(vl_jepa_export)
    frozen = {k: v.clone() for k, v in module.vl_jepa.state_dict().items()}
    decoder_before = module.decoder.projection[0].weight.clone()
    trainer = fit(module, shapes_root, tmp_path)
    for name, value in module.vl_jepa.state_dict().items():
        torch.testing.assert_close(value, frozen[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(module.decoder.projection[0].weight, decoder_before)
    for key in ("val/predicted/rougeL", "val/predicted/exact_match", "val/target/rougeL"):
        assert 0.0 <= float(trainer.callback_metrics[key]) <= 1.0

    checkpoint = tmp_path / "decoder.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert saved and not any(name.startswith("vl_jepa.") for name in saved)  # reloads from source
    reloaded = YDecoderModule.load_from_checkpoint(checkpoint)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, msg=name)

    folder = export_decoder_checkpoint(str(checkpoint), str(tmp_path / "captioner"))
    assert (Path(folder) / "decoder" / "model.safetensors").is_file()
    standalone = PretrainedVLJEPA.from_pretrained(folder)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    embeddings = standalone.encode_images(images)
    module.eval()
    expected = module.decoder.generate(embeddings, num_beams=2)
    assert standalone.decode(embeddings, num_beams=2, batch_size=2) == expected
    assert standalone.caption(images, num_beams=2) == expected
    again = PretrainedVLJEPA.from_pretrained(_resaved(standalone, tmp_path))
    assert again.decode(embeddings, num_beams=2) == expected


def _resaved(model: PretrainedVLJEPA, tmp_path: Path) -> str:
    model.save_pretrained(tmp_path / "resaved")
    return str(tmp_path / "resaved")


def test_an_export_without_decoder_loads_and_says_how_to_get_one(vl_jepa_export) -> None:
    model = PretrainedVLJEPA.from_pretrained(vl_jepa_export)
    assert model.decoder is None
    with pytest.raises(ValueError, match="no Y-decoder"):
        model.decode(torch.randn(2, 16))
    with pytest.raises(ValueError, match="no Y-decoder"):
        model.caption(["no-such-image.png"])  # before any image is read


def test_caption_command_writes_captions_and_scores(vl_jepa_export, tmp_path, capsys) -> None:
    module = decoder_module(vl_jepa_export)
    folder = str(tmp_path / "captioner")
    module.standalone().save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for name, colour in (("one", "red"), ("two", "blue")):
        Image.new("RGB", (40, 32), colour).save(images / f"{name}.png")
    (images / "one.txt").write_text("a red image")
    output = tmp_path / "captions.jsonl"
    main(["caption", folder, str(images), "--output", str(output), "--num_beams", "2"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["key"] for row in rows] == ["one", "two"]
    assert rows[0]["truth"] == "a red image" and "truth" not in rows[1]
    standalone = PretrainedVLJEPA.from_pretrained(folder)
    expected = standalone.caption([images / "one.png", images / "two.png"], num_beams=2)
    assert [row["caption"] for row in rows] == expected
    assert "against the 1 true captions" in capsys.readouterr().out


def test_unknown_condition_is_refused(vl_jepa_export) -> None:
    with pytest.raises(ValueError, match="condition must be one of"):
        decoder_module(vl_jepa_export, condition="caption")


@pytest.mark.slow
def test_config_fits_from_the_command_line(vl_jepa_export, shapes_root, tmp_path) -> None:
    config = str(Path(__file__).resolve().parents[2] / "configs" / "y_decoder_shapes_tiny.yaml")
    main(
        [
            "fit", "--config", config,
            f"--model.init_args.vl_jepa={vl_jepa_export}",
            "--model.init_args.lm.hidden_size=32", "--model.init_args.lm.intermediate_size=64",
            "--model.init_args.lm.num_attention_heads=2",
            "--model.init_args.lm.num_key_value_heads=2",
            f"--data.init_args.root={shapes_root}", "--data.init_args.train_samples=256",
            "--data.init_args.val_samples=64", "--data.init_args.image_size=32",
            "--data.init_args.batch_size=16", "--data.init_args.num_workers=0",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}",
        ]
    )  # fmt: skip
    checkpoint = tmp_path / "y_decoder" / "version_0" / "checkpoints" / "last.ckpt"
    folder = tmp_path / "captioner"
    main(["export-decoder", str(checkpoint), str(folder)])
    assert PretrainedVLJEPA.from_pretrained(str(folder)).decoder is not None
