"""The optimizers of autostep."""

from .labpal import LABPAL
from .layerwise import PLASLS
from .pal import PAL
from .salsa import ALSALS, SALSA
from .sls import SLS, AdamSLS

__all__ = ["SLS", "AdamSLS", "SALSA", "ALSALS", "PLASLS", "PAL", "LABPAL"]
