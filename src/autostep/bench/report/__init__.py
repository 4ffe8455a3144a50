"""The benchmark report: a computed headline, paired statistics against the tuned baseline, the
controlled overhead table, per-problem tables and figures.

* :mod:`.common`  the section titles, the reference methods (:data:`BASELINE`, :data:`RECOMMENDED`),
  number formatting;
* :mod:`.stats`  time to target, the paired t-test against the baseline, the bootstrap interval;
* :mod:`.summary`  per problem and method aggregates, ranks, the headline sentence;
* :mod:`.markdown`  ``report.md`` (:func:`write_report`);
* :mod:`.styles`  one style per method, axis limits, legends, figures on their own Agg canvas;
* :mod:`.plots`  the figures (:func:`figures`).
"""

from .common import BASELINE, RECOMMENDED, SECTIONS
from .markdown import write_report
from .plots import figures
from .stats import paired_compare, time_to_target
from .styles import GREY, method_styles
from .summary import headline, summarize

__all__ = ["write_report", "time_to_target", "summarize", "SECTIONS", "paired_compare", "figures",
           "method_styles", "BASELINE", "RECOMMENDED", "headline", "GREY"]
