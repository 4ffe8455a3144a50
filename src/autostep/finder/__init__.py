"""Learning-rate search before training.

* :func:`find_lr` -- the step-sampling search with reset trials, viable window, three picks and
  adaptive refinement (``lr-step-sampling-search.txt``), plus seeds, divergence handling, executors.
* :func:`range_test` -- the classic range test and its published suggestion rules, as baselines.
* :class:`FinderResult` -- what both return; :func:`plot_results` plots several side by side.
"""

from .curve import PICKS, CurveAnalysis, analyze
from .rangetest import range_test
from .result import FinderResult, Trial, plot_results
from .refine import DEFAULT_LR_RANGE, search_curve
from .search import NoViableRateError, find_lr
from .trials import TrialRunner

__all__ = [
    "find_lr",
    "range_test",
    "FinderResult",
    "NoViableRateError",
    "Trial",
    "TrialRunner",
    "plot_results",
    "analyze",
    "CurveAnalysis",
    "search_curve",
    "PICKS",
    "DEFAULT_LR_RANGE",
]
