"""Plain ``nn.Module`` model cores, shared by training, export and inference."""

from jepa_lightning.models.ijepa import IJEPAModel
from jepa_lightning.models.vl_jepa import BatchForward, VLJEPAModel

__all__ = ["BatchForward", "IJEPAModel", "VLJEPAModel"]
