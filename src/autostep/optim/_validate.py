"""Hyper-parameter validation with errors that name the bad value and say what to do."""

from __future__ import annotations

import math
from typing import Any, Iterable


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def positive(name: str, value: Any) -> float:
    v = _num(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def nonnegative(name: str, value: Any) -> float:
    v = _num(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 < value < 1."""
    v = _num(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}{hint}")
    return v


def half_open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 <= value < 1."""
    v = _num(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}{hint}")
    return v


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def betas(name: str, value: Any) -> tuple[float, float]:
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}") from None
    half_open_unit(f"{name}[0]", b1)
    half_open_unit(f"{name}[1]", b2)
    return float(b1), float(b2)


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value
