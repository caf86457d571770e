"""LightningModules."""

from jepa_lightning.modules.ijepa import IJEPA
from jepa_lightning.modules.vl_jepa import VLJEPA
from jepa_lightning.modules.y_decoder import YDecoderModule

__all__ = ["IJEPA", "VLJEPA", "YDecoderModule"]
