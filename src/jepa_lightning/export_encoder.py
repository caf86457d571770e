"""Exporting a JEPA-pretrained encoder as a ``transformers`` folder: VL-JEPA's X-encoder.

The folder holds what ``save_pretrained`` writes for the target encoder's backbone
(``config.json``, ``model.safetensors``), an image processor config
(``preprocessor_config.json``: resize the shorter side, centre-crop, the encoder's mean and
std) and ``jepa_lightning.json`` (what was exported, from which step). So it is

* a VL-JEPA X-encoder in one config line (the normalisation comes from the processor config)::

    x_encoder:
      class_path: jepa_lightning.encoders.VisionEncoder
      init_args: {model: path/to/folder}

* and a ``transformers`` model: ``AutoModel.from_pretrained(folder)`` and
  ``AutoImageProcessor.from_pretrained(folder)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BitImageProcessor, PreTrainedModel

from jepa_lightning.encoders.vision import VisionEncoder

EXPORT_FORMAT = "jepa-lightning/jepa-encoder"
RECORD_NAME = "jepa_lightning.json"


def _target_encoder(model: Any) -> VisionEncoder:
    """The encoder to export: an IJEPA module's or core's target encoder, or an encoder."""
    core = getattr(model, "model", model)
    encoder = getattr(core, "target_encoder", core)
    if not isinstance(encoder, VisionEncoder):
        raise ValueError(
            f"export_encoder writes VisionEncoder backbones; got {type(encoder).__name__}"
        )
    return encoder


def export_encoder(model: Any, output: str, global_step: int | None = None) -> str:
    """Writes the (target) encoder as a folder that ``VisionEncoder`` and ``transformers`` load.

    Args:
        model: An ``IJEPA`` LightningModule, an ``IJEPAModel`` (their target encoder is
            exported) or a ``VisionEncoder`` (typed ``Any`` so that ``jepa-lightning
            export-encoder --help`` does not import Lightning).
        output: The folder to write (created; files in it are overwritten).
        global_step: The training step of the weights, recorded in ``jepa_lightning.json``;
            default the module's, when it has one.

    Returns:
        The folder.

    Raises:
        ValueError: If there is no ``VisionEncoder`` to export, or its backbone is not a
            ``transformers`` ``PreTrainedModel`` (a SigLIP/CLIP tower inside a full model).
    """
    encoder = _target_encoder(model)
    backbone = encoder.backbone
    if not isinstance(backbone, PreTrainedModel):
        raise ValueError(
            f"cannot save_pretrained a {type(backbone).__name__} backbone; export_encoder "
            "writes whole transformers vision models (ViT, DINOv2)"
        )
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(str(folder))
    side = encoder.image_size
    BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": side},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": side, "width": side},
        image_mean=encoder.image_mean.flatten().tolist(),
        image_std=encoder.image_std.flatten().tolist(),
    ).save_pretrained(str(folder))
    if global_step is None and hasattr(model, "global_step"):
        global_step = int(model.global_step)
    record = {
        "format": EXPORT_FORMAT,
        "exported": "target encoder" if encoder is not model else "encoder",
        "global_step": global_step,
        "encoder": encoder.describe(),
    }
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return str(folder)


def export_encoder_checkpoint(checkpoint: str, output: str) -> str:
    """Exports the target encoder of an ``IJEPA`` checkpoint written by ``jepa-lightning fit``.

    Such checkpoints record the encoder's ``class_path`` config, so the module rebuilds from
    the checkpoint alone.

    Args:
        checkpoint: Path of the ``.ckpt`` file (e.g. the best one by a probe).
        output: The folder to write.

    Returns:
        The folder.

    Raises:
        ValueError: If the checkpoint is not an ``IJEPA`` one that records its encoder.
    """
    from jepa_lightning.modules.ijepa import IJEPA

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    if "encoder" not in saved.get("hyper_parameters", {}):
        raise ValueError(
            f"{checkpoint} is not an IJEPA checkpoint that records its encoder (a fit by "
            "`jepa-lightning fit` does): load it into an IJEPA module in Python and call "
            "jepa_lightning.export_encoder.export_encoder(module, output)"
        )
    step = int(saved.get("global_step", 0))
    del saved
    module = IJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
    return export_encoder(module, output, global_step=step)
