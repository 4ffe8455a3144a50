"""What every part of the benchmark report shares: the section titles, the reference methods, and
small helpers (successful runs, number formatting, a method's family and kind in the registry)."""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["SECTIONS", "BASELINE", "RECOMMENDED", "LOSS_FLOOR", "ok_runs", "fmt", "family_of", "kind_of"]

#: section titles every report contains (tests check them)
SECTIONS = ("## Summary", "## Overhead (controlled)", "## Per-problem results", "## Tuning", "## Plots",
            "## Notes")
#: the tuned baseline every method is compared with, and the method the report recommends if present
BASELINE = "Adam-cosine-tuned"
RECOMMENDED = "Autostep"
LOSS_FLOOR = 1e-12  # suboptimalities below this are treated as equal (exact-optimum problems)


def ok_runs(runs):
    """The runs that finished (status ``ok``)."""
    return [r for r in runs if r.get("status") == "ok"]


def fmt(x: float, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits, scientific when very large or small."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def family_of(name: str) -> str:
    """The registry family of a method (``autostep``, ``peer`` or ``baseline``)."""
    from ... import registry
    spec = registry.REGISTRY.get(name)
    return spec.family if spec else "autostep"


def kind_of(name: str) -> Optional[str]:
    """The registry kind of a method (``tuned``, ``selector``, ...), or None when unregistered."""
    from ... import registry
    spec = registry.REGISTRY.get(name)
    return spec.kind if spec else None
