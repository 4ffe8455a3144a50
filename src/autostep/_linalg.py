"""Tiny dense linear algebra on Python floats (the 3x3 systems of the parabola fits)."""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["solve3"]


def solve3(a: Sequence[Sequence[float]], b: Sequence[float], rtol: float = 0.0) -> Optional[list]:
    """Solve the 3x3 system ``a x = b`` by Gaussian elimination with partial pivoting.

    Returns ``None`` when a pivot is zero or at most ``rtol`` times the largest entry of ``a``
    (singular or numerically singular system); the caller decides what that means.
    """
    m = [list(map(float, row)) + [float(rhs)] for row, rhs in zip(a, b)]
    scale = max(abs(m[i][j]) for i in range(3) for j in range(3)) or 1.0
    for col in range(3):
        piv = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) <= rtol * scale or m[piv][col] == 0.0:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for c in range(col, 4):
                m[r][c] -= f * m[col][c]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][c] * x[c] for c in range(r + 1, 3))) / m[r][r]
    return x
