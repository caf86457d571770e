"""Loss modules."""

from jepa_lightning.losses.info_nce import InfoNCELoss
from jepa_lightning.losses.masked_token_info_nce import MaskedTokenInfoNCELoss

__all__ = ["InfoNCELoss", "MaskedTokenInfoNCELoss"]
