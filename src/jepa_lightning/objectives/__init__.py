"""Training objectives: each owns its loss, weight and state."""

from jepa_lightning.objectives.base import Objective
from jepa_lightning.objectives.caption import CaptionInfoNCE
from jepa_lightning.objectives.latent_regression import LatentRegression
from jepa_lightning.objectives.masked_tokens import MaskedTokenPrediction

__all__ = ["CaptionInfoNCE", "LatentRegression", "MaskedTokenPrediction", "Objective"]
