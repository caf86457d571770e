"""Exporting a trained VL-JEPA model core, and loading the export without Lightning.

An export is a folder:

* ``model.safetensors``: every weight of the :class:`~jepa_lightning.models.VLJEPAModel`,
  the X-encoder included;
* ``config.json``: what rebuilds it: the shared width, the learned temperature, the
  X-encoder's class and arguments (its ``transformers`` config, normalisation) and
  description, the Y-encoder's and the predictor LM's ``transformers`` configs;
* ``tokenizer/``: the Y-encoder's tokenizer (``save_pretrained``).

:func:`load_exported` rebuilds the same model core that training used (no forward of its
own) and needs ``torch``, ``transformers`` and ``safetensors``, not Lightning.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import PretrainedConfig

from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import config_fields
from jepa_lightning.encoders.text import TextEncoder
from jepa_lightning.encoders.vision import VisionEncoder
from jepa_lightning.models.vl_jepa import VLJEPAModel
from jepa_lightning.predictor import Predictor

EXPORT_FORMAT = "jepa-lightning/vl-jepa-export"
FORMAT_VERSION = 2
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"


def _predictor_lm_config(predictor: Predictor) -> dict[str, Any]:
    """The predictor LM's config, reduced to the layers the predictor kept."""
    config = getattr(predictor.layers[0].self_attn, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise ValueError("cannot export a predictor whose layers do not carry their LM config")
    num_layers = len(predictor.layers)
    overrides: dict[str, Any] = {
        "num_hidden_layers": num_layers,
        # The token embeddings are dropped: a one-token vocabulary keeps them small.
        "vocab_size": 1,
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        overrides["layer_types"] = list(layer_types)[-num_layers:]
    return config_fields(config, **overrides)


def _x_encoder_config(encoder: ModalityEncoder) -> dict[str, Any]:
    """The class path and arguments that rebuild the X-encoder (random weights, same shape)."""
    if not isinstance(encoder, VisionEncoder):
        raise ValueError(f"export rebuilds VisionEncoder X-encoders; got {type(encoder).__name__}")
    return {
        "class_path": "jepa_lightning.encoders.VisionEncoder",
        "init_args": {
            "model": config_fields(encoder.model_config),
            "frozen": encoder.frozen,
            "image_mean": encoder.image_mean.flatten().tolist(),
            "image_std": encoder.image_std.flatten().tolist(),
            **encoder.describe().get("clip", {}),  # a clip encoder's frame sampling
        },
    }


def export_model(model: Any, output: str, temperature: float | None = None) -> str:
    """Exports a VL-JEPA model core, with the learned temperature, to a folder.

    Args:
        model: The trained ``VLJEPA`` LightningModule, or its model core (typed ``Any`` so
            that ``jepa-lightning export --help`` does not import Lightning).
        output: The folder to write (created; files in it are overwritten).
        temperature: The temperature to record with a model core (a ``VLJEPA`` records its
            caption objective's).

    Returns:
        The folder.

    Raises:
        ValueError: If the predictor's LM config cannot be recovered or the X-encoder is
            not a :class:`~jepa_lightning.encoders.VisionEncoder`.
    """
    core = model if isinstance(model, VLJEPAModel) else model.model
    if not isinstance(model, VLJEPAModel) and "caption" in model.objectives:
        temperature = model.objectives["caption"].temperature
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    text_encoder = core.text_encoder
    config = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "embed_dim": core.embed_dim,
        "temperature": temperature,
        "x_encoder": {**_x_encoder_config(core.x_encoder), "describe": core.x_encoder.describe()},
        "text_encoder": {
            "model": config_fields(text_encoder.model.config),
            "max_length": text_encoder.max_length,
            "frozen": text_encoder.frozen,
        },
        "predictor": {"lm_config": _predictor_lm_config(core.predictor)},
    }
    text_encoder.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_model(core, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return str(folder)


def export_checkpoint(checkpoint: str, output: str) -> str:
    """Exports a VLJEPA checkpoint written by ``jepa-lightning fit`` to a folder.

    Such checkpoints record the encoders' ``class_path`` configs, so the model rebuilds
    from the checkpoint alone (a pretrained X-encoder is loaded from its source).

    Args:
        checkpoint: Path of the ``.ckpt`` file.
        output: The folder to write.

    Returns:
        The folder.

    Raises:
        ValueError: If the checkpoint does not record its encoders (a model built in Python:
            load it and call :func:`export_model`).
    """
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    hparams = saved.get("hyper_parameters", {})
    if "x_encoder" not in hparams or "text_encoder" not in hparams:
        raise ValueError(
            f"{checkpoint} does not record its encoders (the model was built in Python, not by "
            "`jepa-lightning fit`): build the model, load the checkpoint into it and call "
            "jepa_lightning.export.export_model(model, output)"
        )
    del saved
    from jepa_lightning.modules.vl_jepa import VLJEPA  # Lightning: only to read checkpoints

    model = VLJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
    return export_model(model, output)


def _build(class_path: str, init_args: dict[str, Any]) -> Any:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**init_args)


def load_exported(folder: str) -> VLJEPAModel:
    """Loads an export written by :func:`export_model`, without Lightning.

    Args:
        folder: The export folder.

    Returns:
        The model core, on the CPU, in eval mode (``config.json`` holds the temperature).

    Raises:
        ValueError: If the folder is not a VL-JEPA export of a known version.
    """
    root = Path(folder)
    config = json.loads((root / CONFIG_NAME).read_text())
    if config.get("format") != EXPORT_FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root / CONFIG_NAME} is not a {EXPORT_FORMAT} version {FORMAT_VERSION} config"
        )
    x_spec, text = config["x_encoder"], config["text_encoder"]
    model = VLJEPAModel(
        _build(x_spec["class_path"], x_spec["init_args"]),
        TextEncoder(
            text["model"],
            tokenizer=str(root / TOKENIZER_DIR),
            max_length=text["max_length"],
            frozen=text["frozen"],
        ),
        embed_dim=config["embed_dim"],
        predictor_lm=config["predictor"]["lm_config"],
    )
    load_model(model, str(root / WEIGHTS_NAME))
    return model.eval()
