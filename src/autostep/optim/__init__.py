"""The optimizers of autostep."""

from .layerwise import PLASLS
from .salsa import ALSALS, SALSA
from .sls import SLS, AdamSLS

__all__ = ["SLS", "AdamSLS", "SALSA", "ALSALS", "PLASLS"]
