"""One progress-bar helper for the long-running tools (find_lr, range_test, lines)."""

from __future__ import annotations

import sys
import warnings
from typing import Optional

__all__ = ["progress_bar"]


def progress_bar(progress: Optional[bool], total: Optional[int], desc: str, unit: str = "step"):
    """A tqdm bar, or ``None``.

    ``progress=None`` shows it when stderr is a terminal; ``True`` always (with a warning when tqdm
    is missing); ``False`` never.  Under ``torch.distributed`` only rank 0 shows one.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from .distributed import is_distributed
    if is_distributed():
        import torch.distributed as dist
        if dist.get_rank() != 0:
            return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("progress=True needs tqdm (pip install tqdm); running without a progress bar",
                      stacklevel=3)
        return None
    return tqdm(total=total, unit=unit, desc=desc, leave=False)
