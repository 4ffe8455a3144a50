"""Pure math of the parabolic line searches (autostep.optim._parabola)."""

import math

import numpy as np
import pytest

from autostep.optim import _parabola as P


def test_fit3_recovers_parabola_and_matches_polyfit():
    a, b, c = 0.7, -1.3, 2.1
    xs = [0.0, 0.01, 0.02]
    ys = [a * x * x + b * x + c for x in xs]
    got = P.fit3(xs, ys)
    assert got == pytest.approx((a, b, c), rel=1e-9)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=3), rng.normal(size=3)
    assert P.fit3(xs, ys) == pytest.approx(tuple(np.polyfit(xs, ys, 2)), rel=1e-9)
    with pytest.raises(ValueError):
        P.fit3([0.0, 0.0, 1.0], [1.0, 2.0, 3.0])


def test_line_min_and_pal_cases():
    assert P.line_min(2.0, -4.0) == 1.0
    assert P.line_min(0.0, -1.0) is None and P.line_min(-1.0, -1.0) is None
    # exact parabola l(s) = 2 s^2 - 4 s + 3: minimum at 1
    l = lambda s: 2 * s * s - 4 * s + 3  # noqa: E731
    s, case, a = P.pal_step(l(0), l(0.1), -4.0, 0.1, 1.0, 10.0)
    assert case == "parabola" and s == pytest.approx(1.0) and a == pytest.approx(2.0)
    assert P.pal_step(l(0), l(0.1), -4.0, 0.1, 1.66, 10.0)[0] == pytest.approx(1.66)
    assert P.pal_step(l(0), l(0.1), -4.0, 0.1, 1.66, 1.5)[0] == 1.5  # capped
    s, case, _ = P.pal_step(1.0, 0.5, -1.0, 0.1, 1.66, 10.0)  # concave: l(mu) below the tangent
    assert case == "concave" and s == 0.1
    assert P.pal_step(1.0, 0.5, 0.2, 0.1, 1.66, 10.0)[:2] == (0.0, "ascent")
    assert P.pal_step(1.0, math.inf, -1.0, 0.1, 1.66, 10.0)[:2] == (0.0, "nonfinite")


def test_noise_factor_is_eq_7():
    assert P.noise_factor(40_000, 128) == pytest.approx(1.0)
    assert P.noise_factor(40_000, 10) == pytest.approx(12.8)
    assert P.noise_factor(1257, 64) == pytest.approx(128 / 64 * 1257 / 40_000)
    assert P.noise_factor(50_000, 128) == pytest.approx(1.25)
    assert P.paper_step_budget(P.noise_factor(40_000, 10)) == 1_920_000
    with pytest.raises(ValueError):
        P.noise_factor(0, 128)


def test_batch_multiplier_schedule():
    T = 100  # floor(50), floor(75)
    ks = [P.batch_multiplier(t, T) for t in range(101)]
    assert ks[:51] == [1] * 51 and ks[51:76] == [2] * 25 and ks[76:] == [4] * 25
    assert P.batch_multiplier(10_000, None) == 1  # no total_steps: no schedule
    assert [P.batch_multiplier(t, T, 12.8) for t in (0, 60, 80)] == [13, 26, 51]
    assert [P.batch_multiplier(t, T, 0.1) for t in (0, 60, 80)] == [1, 1, 1]
    assert P.batch_multiplier(0, None, 2.6) == 3


def test_approx_calls():
    assert [P.approx_calls(10, k) for k in (1, 2, 4, 13)] == [10, 10, 12, 13]
    assert P.approx_calls(1, 1) == 1
