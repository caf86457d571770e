"""Modality encoders: the base class and the vision and text encoders."""

from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder, SampleCodec
from jepa_lightning.encoders.text import TextCodec, TextEncoder, masked_mean
from jepa_lightning.encoders.vision import ImageCodec, VisionEncoder

__all__ = [
    "EncoderOutput",
    "ImageCodec",
    "ModalityEncoder",
    "SampleCodec",
    "TextCodec",
    "TextEncoder",
    "VisionEncoder",
    "masked_mean",
]
