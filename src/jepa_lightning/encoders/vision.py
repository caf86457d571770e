"""The frozen vision X-encoder over ``transformers`` vision backbones."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn
from transformers.image_processing_base import ImageProcessingMixin

from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder, SampleCodec
from jepa_lightning.encoders.hf import ModelSource, attention_kernel, build_model
from jepa_lightning.encoders.patch_embedding import use_patch_linear

if TYPE_CHECKING:
    from jepa_lightning.encoders.video import ShortClipRule

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
            return self.transform(opened)

    def transform(self, image: Image.Image) -> Tensor:
        """Converts a PIL image to RGB, resizes its shorter side and centre-crops it.

        Args:
            image: Any PIL image.

        Returns:
            ``(3, image_size, image_size)`` ``uint8`` tensor.
        """
        side = (self.image_size, self.image_size)
        # convert() and fit() copy the pixels even when there is nothing to do: skip them then.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != side:
            rgb = ImageOps.fit(rgb, side, Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        """Stacks decoded images into ``(B, 3, image_size, image_size)``."""
        return torch.stack(list(items))


class VisionEncoder(ModalityEncoder):
    """A ``transformers`` vision backbone that turns images and clips into patch tokens.

    Supports V-JEPA 2 (``VJEPA2Model``) and generic vision backbones (ViT, DINOv2,
    SigLIP/CLIP vision towers). Prefix tokens (CLS, registers) are dropped: the
    output is the :attr:`grid` of patch tokens, frame-major then row-major.

    Inputs are ``uint8`` images ``(B, 3, H, W)`` or clips ``(B, T, 3, H, W)``
    already resized to :attr:`image_size` (by :meth:`codec`); normalisation happens
    here, on the model's device. An image is a one-frame clip.

    * **Clips** (``num_frames > 1``): V-JEPA 2 reads a clip natively, in tubelets of
      its config's ``tubelet_size`` frames (``num_frames`` must be a multiple of it and
      at most its ``frames_per_clip``); the grid is ``(num_frames / tubelet_size, h, w)``.
      An image backbone encodes each frame on its own; the grid is
      ``(num_frames, h, w)``. Either way all the clip's tokens go to the predictor,
      which tells frames apart by position: each token's flattened grid index
      ``frame * h * w + row * w + col`` is both its rotary position and the row of a
      learned position table, so each (frame, row, column) has its own learned
      embedding.
    * **Fewer frames**: a batch with ``T < num_frames`` frames (images: ``T = 1``; for
      V-JEPA 2, 1 or a multiple of the tubelet) gives the tokens of the first
      ``T`` frames only, at the same positions as those frames of a full clip. So one
      model trains on images (stage 1) and then on clips (stage 2), and can be
      evaluated on single frames. :attr:`num_tokens` and :attr:`grid` describe a full
      clip (the most tokens).
    * ``num_frames = 1`` (the default) is the image encoder: 2-D grid, image codec.

    Args:
        model: A hub name or local folder (pretrained) or a config dict with
            ``model_type`` (random init, for tests and offline use).
        frozen: Freeze the backbone (the VL-JEPA default).
        image_mean: Per-channel normalisation mean; default: the pretrained
            processor's, else ImageNet's.
        image_std: Per-channel normalisation std, as ``image_mean``.
        lr_multiplier: Learning-rate scale when not frozen.
        num_frames: Frames per clip; 1 for images.
        frame_stride: Source frames between two sampled frames (see
            :class:`~jepa_lightning.encoders.video.VideoCodec`).
        fps: Sample at this frame rate instead of a fixed stride (video files only).
        short_clips: ``"pad"`` (repeat the last frame) or ``"loop"`` for sources shorter
            than the clip.

    Raises:
        ValueError: If the backbone has no square ``image_size`` it can report, or
            ``num_frames`` does not suit V-JEPA 2's tubelets.
    """

    def __init__(
        self,
        model: ModelSource,
        frozen: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        lr_multiplier: float = 1.0,
        num_frames: int = 1,
        frame_stride: int = 1,
        fps: float | None = None,
        short_clips: ShortClipRule = "pad",
    ) -> None:
        super().__init__(frozen=frozen, lr_multiplier=lr_multiplier)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.source = model
        self.backbone: nn.Module
        self.image_mean: Tensor
        self.image_std: Tensor
        hf_model = build_model(model)
        config = hf_model.config
        self.model_config = config
        self.is_video_model = config.model_type == "vjepa2"
        self.frames_per_token = 1
        if self.is_video_model:
            # Only the encoder is used; the V-JEPA 2 predictor would waste memory.
            self.backbone = cast(nn.Module, hf_model.encoder)
            image_size = config.crop_size
            self.frames_per_token = int(config.tubelet_size)
            if num_frames > 1 and (
                num_frames % self.frames_per_token or num_frames > config.frames_per_clip
            ):
                raise ValueError(
                    f"num_frames={num_frames} for V-JEPA 2 must be a multiple of its "
                    f"tubelet_size ({self.frames_per_token}) and at most its frames_per_clip "
                    f"({config.frames_per_clip})"
                )
        else:
            self.backbone = getattr(hf_model, "vision_model", hf_model)
            config = getattr(config, "vision_config", config)
            image_size = config.image_size
        self._attention_config = config  # the config the backbone's attention layers read
        if not isinstance(image_size, int):
            raise ValueError(f"vision encoder needs a square int image_size, got {image_size}")
        use_patch_linear(self.backbone)  # the patch embedding as one matmul: faster on the CPU
        patch_size = config.patch_size
        self.image_size = image_size
        self.num_frames = num_frames
        # Imported here: the clip codec reuses this module's ImageCodec.
        from jepa_lightning.encoders.video import VideoCodec

        self._clip = VideoCodec(image_size, num_frames, frame_stride, fps, short_clips)
        side = image_size // patch_size
        temporal = () if num_frames == 1 else (num_frames // self.frames_per_token,)
        self._grid: tuple[int, ...] = (*temporal, side, side)
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
        """Number of patch tokens of an image, or of a full clip."""
        return math.prod(self._grid)

    @property
    def grid(self) -> tuple[int, ...]:
        """``(rows, columns)`` for images, ``(frames, rows, columns)`` for clips.

        For V-JEPA 2 the frames are token frames: tubelets.
        """
        return self._grid

    @property
    def tokens_per_frame(self) -> int:
        """Patch tokens of one (token) frame: ``rows * columns``."""
        return self._grid[-1] * self._grid[-2]

    def codec(self) -> SampleCodec:
        """An :class:`ImageCodec` (``num_frames = 1``) or a clip codec at this encoder's sizes.

        Returns:
            The codec; a clip codec also reads images, as one-frame clips.
        """
        if self.num_frames == 1:
            return ImageCodec(self.image_size)
        return self._clip

    def describe(self) -> dict[str, Any]:
        """The base description plus the source, image size and normalisation.

        Returns:
            A JSON-able dict.
        """
        description = {
            **super().describe(),
            "source": self.source,
            "image_size": self.image_size,
            "image_mean": [round(float(v), 6) for v in self.image_mean.flatten()],
            "image_std": [round(float(v), 6) for v in self.image_std.flatten()],
        }
        if self.num_frames > 1:  # images keep their description (and feature-cache fingerprints)
            clip = self._clip
            description["clip"] = {
                "num_frames": clip.num_frames,
                "frame_stride": clip.frame_stride,
                "fps": clip.fps,
                "short_clips": clip.short_clips,
            }
        return description

    def thumbnails(self, inputs: Tensor, size: int) -> Tensor:
        """The images themselves, resized to ``size`` (nearest neighbour).

        Args:
            inputs: ``(B, 3, H, W)`` ``uint8`` (or float in ``[0, 1]``) images, or clips
                ``(B, T, 3, H, W)``, shown by their middle frame.
            size: Side of each picture in pixels.

        Returns:
            ``(B, 3, size, size)`` ``uint8`` pictures on the CPU.
        """
        if inputs.dim() == 5:
            inputs = inputs[:, inputs.shape[1] // 2]
        pixels = inputs.float() if inputs.dtype == torch.uint8 else inputs.float() * 255
        resized = torch.nn.functional.interpolate(pixels, size=(size, size))
        return resized.round().clamp(0, 255).to(torch.uint8).cpu()

    def normalize(self, images: Tensor) -> Tensor:
        """Converts ``uint8`` images to normalised floats.

        Args:
            images: ``(B, 3, H, W)`` images or ``(B, T, 3, H, W)`` clips, ``uint8`` (or float
                in ``[0, 1]``).

        Returns:
            Float pixels of the same shape, normalised with the encoder's mean/std.
        """
        dtype = self.image_mean.dtype  # float32, or float64 after .double()
        # (pixels * range - mean) / std as pixels * scale + shift, in place on the converted
        # copy: on the CPU every new image-sized buffer of a step is paged in afresh, and the
        # three passes of the plain form, or one more buffer, cost a few ms of a default step.
        scale = 1 / self.image_std
        if images.dtype == torch.uint8:
            scale = scale / 255
        pixels = images.to(dtype, copy=True)
        return pixels.mul_(scale).add_(-self.image_mean / self.image_std)

    def encode(self, inputs: Tensor) -> EncoderOutput:
        """Encodes a batch of images or clips.

        Args:
            inputs: ``(B, 3, H, W)`` images or ``(B, T, 3, H, W)`` clips at
                :attr:`image_size`, ``T <= num_frames`` (for V-JEPA 2: 1 or a multiple of
                its tubelet).

        Returns:
            Patch tokens ``(B, frames * rows * columns, output_dim)``, frame-major (the
            first ``T`` frames' positions of the grid); the mask is all ``True``.

        Raises:
            ValueError: If the inputs have another shape or too many frames.
        """
        side = self.image_size
        clips = inputs.unsqueeze(1) if inputs.dim() == 4 else inputs
        frames = clips.shape[1] if clips.dim() == 5 else 0
        tubelet = self.frames_per_token
        if (
            clips.dim() != 5
            or tuple(clips.shape[2:]) != (3, side, side)
            or not 1 <= frames <= self.num_frames
            or (frames > 1 and frames % tubelet)
        ):
            frame_rule = f", T <= {self.num_frames}" if self.num_frames > 1 else ""
            if tubelet > 1 and self.num_frames > 1:
                frame_rule += f", T = 1 or a multiple of {tubelet}"
            raise ValueError(
                f"vision encoder expects images (B, 3, {side}, {side}) or clips "
                f"(B, T, 3, {side}, {side}){frame_rule}; got {tuple(inputs.shape)}"
            )
        pixels = self.normalize(clips)
        with attention_kernel(self._attention_config, pixels.device, pixels.dtype):
            if self.is_video_model:
                hidden = self.backbone(pixel_values_videos=pixels).last_hidden_state
                tokens = hidden[
                    :, hidden.shape[1] - self.tokens_per_frame * max(frames // tubelet, 1) :
                ]
            else:
                hidden = self.backbone(pixel_values=pixels.flatten(0, 1)).last_hidden_state
                per_frame = hidden[:, hidden.shape[1] - self.tokens_per_frame :]
                tokens = per_frame.reshape(clips.shape[0], frames * self.tokens_per_frame, -1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)
