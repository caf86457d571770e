"""The frozen vision X-encoder over ``transformers`` vision backbones."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn
from transformers.image_processing_base import ImageProcessingMixin

from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder, SampleCodec
from jepa_lightning.encoders.hf import ModelSource, build_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Image formats read and written, as WebDataset fields (file extensions without the dot)."""


def _processor_mean_std(source: ModelSource) -> tuple[list[float], list[float]] | None:
    """Reads ``image_mean``/``image_std`` from a pretrained source's processor config."""
    if not isinstance(source, str):
        return None
    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(source)
    except OSError:
        return None
    if "image_mean" in config and "image_std" in config:
        return list(config["image_mean"]), list(config["image_std"])
    return None


@dataclass(frozen=True)
class ImageCodec:
    """Decodes image bytes, resizes the shorter side and centre-crops to a square.

    Args:
        image_size: Side of the square output.
    """

    image_size: int
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    def decode(self, data: bytes) -> Tensor:
        """Decodes one image.

        Args:
            data: Encoded image bytes.

        Returns:
            ``(3, image_size, image_size)`` ``uint8`` tensor.

        Raises:
            PIL.UnidentifiedImageError: If the bytes are not a readable image.
            OSError: If the image is truncated.
        """
        with Image.open(io.BytesIO(data)) as opened:
            side = (self.image_size, self.image_size)
            image = ImageOps.fit(opened.convert("RGB"), side, Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        """Stacks decoded images into ``(B, 3, image_size, image_size)``."""
        return torch.stack(list(items))


class VisionEncoder(ModalityEncoder):
    """A ``transformers`` vision backbone that turns images into patch tokens.

    Supports V-JEPA 2 (``VJEPA2Model``: a still image is a one-frame clip, which
    the model repeats to fill its first tubelet) and generic vision backbones
    (ViT, DINOv2, SigLIP/CLIP vision towers). Prefix tokens (CLS, registers)
    are dropped: the output is the :attr:`grid` of patch tokens, row-major.

    Images arrive as ``uint8`` tensors ``(B, 3, H, W)`` already resized to
    :attr:`image_size`; normalisation happens here, on the model's device.

    Args:
        model: A hub name or local folder (pretrained) or a config dict with
            ``model_type`` (random init, for tests and offline use).
        frozen: Freeze the backbone (the VL-JEPA default).
        image_mean: Per-channel normalisation mean; default: the pretrained
            processor's, else ImageNet's.
        image_std: Per-channel normalisation std, as ``image_mean``.
        lr_multiplier: Learning-rate scale when not frozen.

    Raises:
        ValueError: If the backbone has no square ``image_size`` it can report.
    """

    def __init__(
        self,
        model: ModelSource,
        frozen: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__(frozen=frozen, lr_multiplier=lr_multiplier)
        self.source = model
        self.backbone: nn.Module
        self.image_mean: Tensor
        self.image_std: Tensor
        hf_model = build_model(model)
        config = hf_model.config
        self.model_config = config
        self.is_video_model = config.model_type == "vjepa2"
        if self.is_video_model:
            # Only the encoder is used; the V-JEPA 2 predictor would waste memory.
            self.backbone = cast(nn.Module, hf_model.encoder)
            image_size = config.crop_size
        else:
            self.backbone = getattr(hf_model, "vision_model", hf_model)
            config = getattr(config, "vision_config", config)
            image_size = config.image_size
        if not isinstance(image_size, int):
            raise ValueError(f"vision encoder needs a square int image_size, got {image_size}")
        patch_size = config.patch_size
        self.image_size = image_size
        self._grid = (image_size // patch_size, image_size // patch_size)
        self._output_dim = int(config.hidden_size)
        defaults = _processor_mean_std(model) or (IMAGENET_MEAN, IMAGENET_STD)
        mean = torch.tensor(image_mean if image_mean is not None else defaults[0])
        std = torch.tensor(image_std if image_std is not None else defaults[1])
        self.register_buffer("image_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", std.view(1, 3, 1, 1), persistent=False)

    @property
    def output_dim(self) -> int:
        """Hidden width of the backbone."""
        return self._output_dim

    @property
    def num_tokens(self) -> int:
        """Number of patch tokens per image."""
        return self._grid[0] * self._grid[1]

    @property
    def grid(self) -> tuple[int, int]:
        """The ``(rows, columns)`` grid of patch tokens."""
        return self._grid

    def codec(self) -> SampleCodec:
        """An :class:`ImageCodec` at this encoder's image size."""
        return ImageCodec(self.image_size)

    def describe(self) -> dict[str, Any]:
        """The base description plus the source, image size and normalisation.

        Returns:
            A JSON-able dict.
        """
        return {
            **super().describe(),
            "source": self.source,
            "image_size": self.image_size,
            "image_mean": [round(float(v), 6) for v in self.image_mean.flatten()],
            "image_std": [round(float(v), 6) for v in self.image_std.flatten()],
        }

    def normalize(self, images: Tensor) -> Tensor:
        """Converts ``uint8`` images to normalised floats.

        Args:
            images: ``(B, 3, H, W)`` ``uint8`` (or float in ``[0, 1]``) images.

        Returns:
            ``(B, 3, H, W)`` float images, normalised with the encoder's mean/std.
        """
        dtype = self.image_mean.dtype  # float32, or float64 after .double()
        pixels = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
        return (pixels - self.image_mean) / self.image_std

    def encode(self, inputs: Tensor) -> EncoderOutput:
        """Encodes a batch of images.

        Args:
            inputs: ``(B, 3, H, W)`` images at :attr:`image_size`.

        Returns:
            Patch tokens ``(B, grid_h * grid_w, output_dim)``; the mask is all ``True``.

        Raises:
            ValueError: If the images are not ``(B, 3, image_size, image_size)``.
        """
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"vision encoder expects images (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(inputs.shape)}"
            )
        pixels = self.normalize(inputs)
        if self.is_video_model:
            hidden = self.backbone(pixel_values_videos=pixels.unsqueeze(1)).last_hidden_state
        else:
            hidden = self.backbone(pixel_values=pixels).last_hidden_state
        tokens = hidden[:, hidden.shape[1] - self.num_tokens :]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)
