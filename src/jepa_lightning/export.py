"""Exporting a trained VL-JEPA for inference, and loading the export without Lightning.

An export is a folder:

* ``model.safetensors``: the weights of :class:`ExportedVLJEPA`: the Y-encoder, the
  predictor, the text projection and the (clamped) logit scale;
* ``config.json``: what rebuilds them: the shared width, the temperature, the Y-encoder's
  and the predictor LM's ``transformers`` configs, and a description of the X-encoder;
* ``tokenizer/``: the Y-encoder's tokenizer (``save_pretrained``).

The frozen X-encoder is not exported: ``config.json`` records its source (hub name, folder
or config dict) and geometry, and :meth:`ExportedVLJEPA.predict` takes its visual tokens.
An X-encoder built from a config dict has random weights: its tokens must come from the
checkpoint the export was made from.

:func:`load_exported` needs ``torch``, ``transformers`` and ``safetensors``, not Lightning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from transformers import PretrainedConfig

from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import describe_source
from jepa_lightning.encoders.text import TextEncoder, collate_optional_texts, masked_mean
from jepa_lightning.predictor import Predictor

if TYPE_CHECKING:
    from jepa_lightning.modules.vl_jepa import VLJEPA

EXPORT_FORMAT = "jepa-lightning/vl-jepa-export"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"


class ExportedVLJEPA(nn.Module):
    """A trained VL-JEPA for inference: text embeddings ``s`` and predictions ``ŝ``.

    Both are L2-normalised, as VLJEPA's retrieval embeddings are: a text embeds as
    ``s = normalize(W · masked_mean(Y(text)))``, visual tokens (with an optional query) as
    ``ŝ = normalize(predictor(tokens, query))``.

    Args:
        text_encoder: The Y-encoder with its tokenizer.
        predictor: The predictor.
        text_projection: Projection of the pooled Y-encoder tokens to the shared width.
        logit_scale: The InfoNCE logit scale, ``log(1 / temperature)``.
        vision_encoder: Description of the X-encoder whose tokens :meth:`predict` takes.
    """

    logit_scale: Tensor

    def __init__(
        self,
        text_encoder: TextEncoder,
        predictor: Predictor,
        text_projection: nn.Linear,
        logit_scale: Tensor,
        vision_encoder: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.predictor = predictor
        self.text_projection = text_projection
        self.register_buffer("logit_scale", logit_scale.detach().clone().float())
        self.vision_encoder_info = dict(vision_encoder or {})

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        return self.text_projection.out_features

    @property
    def temperature(self) -> float:
        """The learned InfoNCE temperature ``1 / exp(logit_scale)``."""
        return float(torch.exp(-self.logit_scale))

    def _tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = self.text_encoder.tokenize(texts)
        device = self.logit_scale.device
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device).bool()

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Embeds texts as targets ``s``.

        Args:
            texts: The texts (truncated to the Y-encoder's ``max_length`` tokens).

        Returns:
            ``(len(texts), embed_dim)`` unit-norm embeddings.
        """
        input_ids, mask = self._tokenize(texts)
        tokens, valid = self.text_encoder({"input_ids": input_ids, "attention_mask": mask})
        return F.normalize(self.text_projection(masked_mean(tokens, valid)), dim=-1)

    def predict(self, visual_tokens: Tensor, query: Sequence[str] | None = None) -> Tensor:
        """Predicts the embeddings ``ŝ`` of visual tokens, optionally given queries.

        Args:
            visual_tokens: ``(B, N, Dx)`` tokens of the X-encoder described in
                ``vision_encoder_info``.
            query: One query per row (an empty string: no query), or None: predict the
                caption, as for retrieval.

        Returns:
            ``(B, embed_dim)`` unit-norm predicted embeddings.

        Raises:
            ValueError: If ``query`` does not have one entry per row.
        """
        visual = visual_tokens.to(self.predictor.visual_proj.weight)
        if query is None:
            return F.normalize(self.predictor(visual), dim=-1)
        if len(query) != visual.shape[0]:
            raise ValueError(f"predict: {len(query)} queries for {visual.shape[0]} rows of tokens")
        # As the data collator does: a row without a query has no query token.
        tokens = collate_optional_texts(self.text_encoder.codec(), query)
        device = self.logit_scale.device
        query_embeds = self.text_encoder.embed_tokens(tokens["input_ids"].to(device))
        mask = tokens["attention_mask"].to(device)
        return F.normalize(self.predictor(visual, query_embeds, mask), dim=-1)


def _config_dict(config: PretrainedConfig, **overrides: Any) -> dict[str, Any]:
    """A ``transformers`` config as a dict that rebuilds it in float32 (weights load into it)."""
    fields = config.to_dict()
    for key in ("dtype", "torch_dtype"):
        fields.pop(key, None)
    fields.update(overrides)
    return fields


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
    return _config_dict(config, **overrides)


def _vision_encoder_info(encoder: ModalityEncoder) -> dict[str, Any]:
    """What ``predict`` needs to know of the X-encoder: its source and token geometry."""
    source = getattr(encoder, "source", None)
    info: dict[str, Any] = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "source": source if isinstance(source, str | Mapping) else None,
        "description": describe_source(source) if source is not None else None,
        "output_dim": encoder.output_dim,
        "num_tokens": getattr(encoder, "num_tokens", None),
    }
    for name in ("grid_size", "image_size"):
        value = getattr(encoder, name, None)
        if value is not None:
            info[name] = list(value) if isinstance(value, tuple) else value
    for name in ("image_mean", "image_std"):
        value = getattr(encoder, name, None)
        if isinstance(value, Tensor):
            info[name] = value.flatten().tolist()
    return info


def export_model(model: VLJEPA, output: str) -> str:
    """Exports a VLJEPA's Y-encoder, predictor, projection and temperature to a folder.

    Args:
        model: The trained model.
        output: The folder to write (created; files in it are overwritten).

    Returns:
        The folder.

    Raises:
        ValueError: If the predictor's LM config cannot be recovered.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    text_encoder = model.text_encoder
    predictor = model.predictor
    logit_scale = model.caption_loss.scale().detach().log()
    vision_encoder = _vision_encoder_info(model.vision_encoder)
    config = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "embed_dim": model.text_projection.out_features,
        "temperature": float(torch.exp(-logit_scale)),
        "text_encoder": {
            "source": describe_source(text_encoder.source),
            "max_length": text_encoder.max_length,
            "model_config": _config_dict(text_encoder.model.config),
        },
        "predictor": {
            "visual_dim": predictor.visual_proj.in_features,
            "query_dim": predictor.query_proj.in_features,
            "num_visual_tokens": predictor.num_visual_tokens,
            "lm_config": _predictor_lm_config(predictor),
        },
        "vision_encoder": vision_encoder,
    }
    exported = ExportedVLJEPA(
        text_encoder, predictor, model.text_projection, logit_scale, vision_encoder
    )
    text_encoder.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_model(exported, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
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
    if "vision_encoder" not in hparams or "text_encoder" not in hparams:
        raise ValueError(
            f"{checkpoint} does not record its encoders (the model was built in Python, not by "
            "`jepa-lightning fit`): build the model, load the checkpoint into it and call "
            "jepa_lightning.export.export_model(model, output)"
        )
    del saved
    from jepa_lightning.modules.vl_jepa import VLJEPA  # Lightning: only to read checkpoints

    model = VLJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
    return export_model(model, output)


def load_exported(folder: str) -> ExportedVLJEPA:
    """Loads an export written by :func:`export_model`, without Lightning.

    Args:
        folder: The export folder.

    Returns:
        The model, on the CPU, in eval mode.

    Raises:
        ValueError: If the folder is not a VL-JEPA export of a known version.
    """
    root = Path(folder)
    config = json.loads((root / CONFIG_NAME).read_text())
    if config.get("format") != EXPORT_FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root / CONFIG_NAME} is not a {EXPORT_FORMAT} version {FORMAT_VERSION} config"
        )
    text = config["text_encoder"]
    text_encoder = TextEncoder(
        text["model_config"], tokenizer=str(root / TOKENIZER_DIR), max_length=text["max_length"]
    )
    spec = config["predictor"]
    predictor = Predictor(
        visual_dim=spec["visual_dim"],
        query_dim=spec["query_dim"],
        output_dim=config["embed_dim"],
        num_visual_tokens=spec["num_visual_tokens"],
        lm=spec["lm_config"],
    )
    model = ExportedVLJEPA(
        text_encoder,
        predictor,
        nn.Linear(text_encoder.output_dim, config["embed_dim"]),
        torch.zeros(()),
        config["vision_encoder"],
    )
    load_model(model, str(root / WEIGHTS_NAME))
    return model.eval()
