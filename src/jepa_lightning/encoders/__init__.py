"""Modality encoders: the base class, the vision and text encoders, and the registry."""

from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder, SampleCodec
from jepa_lightning.encoders.registry import available
from jepa_lightning.encoders.text import TextCodec, TextEncoder, masked_mean
from jepa_lightning.encoders.video import VideoCodec
from jepa_lightning.encoders.vision import ImageCodec, VisionEncoder

__all__ = [
    "EncoderOutput",
    "ImageCodec",
    "ModalityEncoder",
    "SampleCodec",
    "TextCodec",
    "TextEncoder",
    "VideoCodec",
    "VisionEncoder",
    "available",
    "masked_mean",
]
