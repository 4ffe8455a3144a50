"""Where a warning raised deep inside a step should point: the caller's ``step()`` line."""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["outside_level"]

#: frames in these folders are autostep's or torch's, not the caller's
_INTERNAL = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
             os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def outside_level() -> int:
    """``stacklevel`` for a warning raised by this function's caller that points at the first
    frame outside autostep and torch: the ``step()`` call of the training loop, however deep the
    step's helpers and torch's wrappers (``no_grad``, the optimizer's profiling hook) nest.  Under
    a framework (Lightning, the HF Trainer) that is the framework's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level
