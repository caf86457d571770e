"""The paper-scale config (configs/vl_jepa_vitl.yaml) and the trainer configs, offline.

The real weights cannot be downloaded here, so the config is checked in three ways:

* it parses with the LightningCLI parser, alone and combined with each trainer config;
* with its three model sources replaced by tiny random config dicts of the same architectures
  (``vjepa2``, ``gemma3_text``: EmbeddingGemma's type, ``llama``), everything else as in the
  file, it builds the intended wiring and trains a step;
* ``from_pretrained`` is what runs for a name: tiny models saved with ``save_pretrained`` to
  folders load with their weights, and each hub name of the file reaches
  ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, TOKENIZER
from lightning.pytorch import LightningDataModule, LightningModule
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from jepa_lightning.batch import Batch
from jepa_lightning.cli import JEPALightningCLI, main
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE

PAPER = REPO / "configs" / "vl_jepa_vitl.yaml"
TRAINERS = [REPO / "configs" / "trainer_ddp_bf16.yaml", REPO / "configs" / "trainer_multinode.yaml"]
VISION_NAME = "facebook/vjepa2-vitl-fpc64-256"
TEXT_NAME = "google/embeddinggemma-300m"
PREDICTOR_NAME = "meta-llama/Llama-3.2-1B"

TINY_VJEPA2: dict[str, Any] = {
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 8,
    "hidden_size": 24,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "pred_hidden_size": 16,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
}
TINY_GEMMA3_TEXT: dict[str, Any] = {
    "model_type": "gemma3_text",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "sliding_window": 16,
}
# EmbeddingGemma's bidirectional attention, where the installed transformers knows the option
# (not 4.53, the oldest supported, whose configs refuse unknown keys here).
if "use_bidirectional_attention" in AutoConfig.for_model("gemma3_text").to_dict():
    TINY_GEMMA3_TEXT["use_bidirectional_attention"] = True
# Deeper than the 8 layers the config keeps, as Llama-3.2-1B (16) is.
TINY_LLAMA_10: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 40,
    "intermediate_size": 64,
    "num_hidden_layers": 10,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 16,
    "max_position_embeddings": 512,
}


def paper_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PAPER.read_text())
    return config


def model_sources_override(
    tmp_path: Path, vision: Any, text: Any, predictor: Any, tokenizer: str | None = None
) -> Path:
    """A config file that replaces the three model sources (and the tokenizer)."""
    text_args: dict[str, Any] = {"model": text}
    if tokenizer is not None:
        text_args["tokenizer"] = tokenizer
    override = {
        "model": {
            "init_args": {
                "x_encoder": {"init_args": {"model": vision}},
                "text_encoder": {"init_args": text_args},
                "predictor_lm": predictor,
            }
        }
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def build(tmp_path: Path, *configs: Path) -> VLJEPA:
    """Instantiates the model as ``jepa-lightning fit`` does, without fitting."""
    args = [f"--config={path}" for path in (PAPER, *configs)]
    cli = JEPALightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=[*args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"],
    )
    assert isinstance(cli.model, VLJEPA)
    return cli.model


@pytest.mark.parametrize("trainer_config", [None, *TRAINERS], ids=["alone", "ddp_bf16", "nodes"])
def test_config_parses_with_the_cli(trainer_config: Path | None, capsys) -> None:
    configs = [PAPER] if trainer_config is None else [PAPER, trainer_config]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(f"--config={path}" for path in configs), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["x_encoder"]["init_args"]["model"] == VISION_NAME
    assert model["text_encoder"]["init_args"]["model"] == TEXT_NAME
    assert model["predictor_lm"] == PREDICTOR_NAME
    assert printed["trainer"]["precision"] == "bf16-mixed"
    if trainer_config is not None:
        trainer = printed["trainer"]
        assert trainer["accelerator"] == "gpu"
        assert trainer["strategy"]["init_args"]["find_unused_parameters"] is False


def test_tiny_stand_ins_build_the_paper_wiring(tmp_path: Path) -> None:
    override = model_sources_override(
        tmp_path, TINY_VJEPA2, TINY_GEMMA3_TEXT, TINY_LLAMA_10, tokenizer=TOKENIZER
    )
    module = build(tmp_path, override)
    model = module.model
    x_encoder = model.x_encoder
    assert isinstance(x_encoder, VisionEncoder)
    assert x_encoder.is_video_model and x_encoder.frozen
    assert not any(p.requires_grad for p in x_encoder.parameters())
    assert model.text_encoder.model.config.model_type == "gemma3_text"
    assert len(model.predictor.layers) == 8
    assert model.predictor.visual_proj.in_features == TINY_VJEPA2["hidden_size"]
    assert model.predictor.query_proj.in_features == TINY_GEMMA3_TEXT["hidden_size"]
    assert model.predictor.output_proj.out_features == 1536
    assert model.text_projection.out_features == 1536
    assert list(module.objectives) == ["caption"]
    caption = module.objectives["caption"]
    assert isinstance(caption, CaptionInfoNCE)
    assert caption.temperature == pytest.approx(0.07)
    groups = {g["name"]: g for g in module.parameter_groups()}
    assert groups["text_encoder"]["lr_multiplier"] == 0.05
    assert groups["head"]["lr_multiplier"] == 1.0
    optimizer, _ = module.build_optimizer(total_steps=100)
    assert type(optimizer) is torch.optim.AdamW
    peaks = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert peaks["head"] == pytest.approx(1e-4)
    assert peaks["text_encoder"] == pytest.approx(5e-6)  # the paper's 0.05x
    assert optimizer.defaults["weight_decay"] == 0.05
    assert optimizer.defaults["betas"] == (0.9, 0.98)

    captions = ["a red circle", "a big blue square"]
    tokens = model.text_encoder.tokenize(captions)
    batch = Batch(
        x=torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
        pair_ids=torch.arange(2),
        keys=["0", "1"],
        captions=captions,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )
    loss = module.compute_losses(BatchForward(model, batch))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.text_encoder.model.embed_tokens.weight.grad is not None


def save_tiny(config: dict[str, Any], folder: Path) -> PreTrainedModel:
    fields = dict(config)
    torch.manual_seed(len(folder.name))
    model = AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    model.save_pretrained(folder)
    return model


def assert_same_weights(got: torch.nn.Module, saved: torch.nn.Module) -> None:
    saved_state = saved.state_dict()
    for name, value in got.state_dict().items():
        assert torch.equal(value, saved_state[name]), name


def test_local_folders_load_pretrained_weights(tmp_path: Path) -> None:
    vision = save_tiny(TINY_VJEPA2, tmp_path / "vjepa2")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    # A model folder with its tokenizer, as a hub repository is: no `tokenizer` key needed.
    text = save_tiny({**TINY_GEMMA3_TEXT, "vocab_size": len(tokenizer)}, tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    predictor = save_tiny(TINY_LLAMA_10, tmp_path / "llama")
    override = model_sources_override(
        tmp_path, str(tmp_path / "vjepa2"), str(tmp_path / "gemma"), str(tmp_path / "llama")
    )
    model = build(tmp_path, override).model

    x_encoder = model.x_encoder
    assert isinstance(x_encoder, VisionEncoder)
    assert_same_weights(x_encoder.backbone, vision.encoder)
    assert_same_weights(model.text_encoder.model, text)
    for kept, layer in zip(model.predictor.layers, predictor.layers[2:], strict=True):
        assert_same_weights(kept, layer)
    assert_same_weights(model.predictor.norm, predictor.norm)
    assert x_encoder.describe()["source"] == str(tmp_path / "vjepa2")


def test_hub_names_go_to_from_pretrained(tmp_path: Path, monkeypatch) -> None:
    stand_ins = {
        VISION_NAME: TINY_VJEPA2,
        TEXT_NAME: TINY_GEMMA3_TEXT,
        PREDICTOR_NAME: TINY_LLAMA_10,
    }
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    requested: list[str] = []

    def from_pretrained(source: str, **kwargs: Any) -> PreTrainedModel:
        requested.append(source)
        fields = dict(stand_ins[source])
        if source == TEXT_NAME:
            fields["vocab_size"] = len(tokenizer)
        return AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))

    def tokenizer_from_pretrained(source: str, **kwargs: Any) -> Any:
        assert source == TEXT_NAME  # the Y-encoder's own tokenizer
        return tokenizer

    monkeypatch.setattr(AutoModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    model = build(tmp_path).model
    assert sorted(requested) == sorted(stand_ins)
    assert len(model.predictor.layers) == 8
    assert model.text_encoder.lr_multiplier == 0.05
