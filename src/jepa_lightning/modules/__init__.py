"""LightningModules."""

from jepa_lightning.modules.vl_jepa import VLJEPA

__all__ = ["VLJEPA"]
