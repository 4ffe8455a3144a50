"""Evaluation metrics."""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["mean_log_loss"]


def mean_log_loss(losses: Iterable[float], optimum: float = 0.0, diverged_value: float | None = None) -> float:
    """The slides' optimizer metric ``L = sum_t log(l_t - l*) / T``.

    Like the area under the log-loss curve: halving the loss counts the same at any level, lower is
    better.  ``optimum`` is ``l*`` (0 when unknown).  A non-finite loss, or one at or below the
    optimum, raises ``ValueError`` unless ``diverged_value`` is given, which is then used for
    non-finite entries (the benchmark charges divergence this way).
    """
    total, n = 0.0, 0
    for t, loss in enumerate(losses):
        loss = float(loss)
        if not math.isfinite(loss):
            if diverged_value is None:
                raise ValueError(f"loss {loss} at index {t} is not finite; pass diverged_value= to charge it")
            total += diverged_value
        else:
            gap = loss - optimum
            if gap <= 0:
                raise ValueError(f"loss {loss} at index {t} is not above the optimum {optimum}")
            total += math.log(gap)
        n += 1
    if n == 0:
        raise ValueError("mean_log_loss needs at least one loss")
    return total / n
