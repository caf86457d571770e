"""LightningModules."""

from jepa_lightning.modules.ijepa import IJEPA
from jepa_lightning.modules.vl_jepa import VLJEPA

__all__ = ["IJEPA", "VLJEPA"]
