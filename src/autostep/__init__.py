"""autostep: learning-rate-free training for PyTorch.

Line searches and learning-rate schedules from the papers, on one core that handles the closure
contract, replayed randomness, BatchNorm buffers, exact line moves and ``torch.distributed``.

    >>> import autostep
    >>> opt = autostep.SALSA(model.parameters())          # doctest: +SKIP
    >>> loss = opt.step(lambda: loss_fn(model(x), y))      # doctest: +SKIP
"""

from ._closure import CLOSURE_CONTRACT, ClosureError, NonFiniteLossError
from .autolr import AutoLR
from .finder import FinderResult, NoViableRateError, find_lr, range_test
from . import lines
from .lines import loss_along_lines
from .metrics import mean_log_loss
from .registry import create, list_methods
from .optim.autostep import Autostep
from .optim import ALSALS, LABPAL, PAL, PLASLS, SALSA, SLS, AdamSLS

__version__ = "0.1.0"

__all__ = [
    "Autostep",
    "SLS",
    "AdamSLS",
    "SALSA",
    "ALSALS",
    "PLASLS",
    "PAL",
    "LABPAL",
    "ClosureError",
    "NonFiniteLossError",
    "CLOSURE_CONTRACT",
    "mean_log_loss",
    "loss_along_lines",
    "create",
    "list_methods",
    "AutoLR",
    "find_lr",
    "range_test",
    "FinderResult",
    "NoViableRateError",
    "__version__",
]
