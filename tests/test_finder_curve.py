"""Window and picks of the step-sampling paper on synthetic curves with known answers."""

import math
import random

import pytest

from autostep.finder.curve import (PICKS, analyze, cap_losses, curvature, derivatives,
                                   local_quadratic, log_midpoint)

# A sigmoid-shaped drop followed by an exponential rise, on the log10-lr axis x:
#   f(x) = TOP - DROP * s((x - C) / W) + A * exp(B * (x - D)),  s = logistic.
TOP, DROP, C, W, A, B, D = 2.3, 2.0, -3.0, 0.3, 0.05, 3.0, -1.0


def f(x):
    return TOP - DROP / (1 + math.exp(-(x - C) / W)) + A * math.exp(B * (x - D))


def f1(x):
    s = 1 / (1 + math.exp(-(x - C) / W))
    return -DROP * s * (1 - s) / W + A * B * math.exp(B * (x - D))


def f2(x):
    s = 1 / (1 + math.exp(-(x - C) / W))
    return -DROP * s * (1 - s) * (1 - 2 * s) / W ** 2 + A * B * B * math.exp(B * (x - D))


def bisect(g, lo, hi, it=200):
    glo = g(lo)
    for _ in range(it):
        mid = (lo + hi) / 2
        if (g(mid) > 0) == (glo > 0):
            lo, glo = mid, g(mid)
        else:
            hi = mid
    return (lo + hi) / 2


X0, X1 = -6.0, 0.0


def exact_answers():
    """Closed-form derivatives + root finding / dense scan: the known answers, in log10 lr."""
    x_min = bisect(f1, -2.5, 0.0)
    top, ymin = f(X0), f(x_min)
    target = top - 0.5 * (top - ymin)
    x_half = bisect(lambda x: f(x) - target, X0, x_min)
    dense = [X0 + i * 1e-4 for i in range(int((x_half - X0) / 1e-4) + 1)]
    x_knee = min(dense, key=lambda x: f2(x) / (1 + f1(x) ** 2) ** 1.5)
    win = [x_knee + i * 1e-4 for i in range(int((x_min - x_knee) / 1e-4) + 1)]
    x_steep = min(win, key=f1)
    return {"max_lr": x_min, "min_lr": x_knee, "half_drop": x_half, "steepest": x_steep}


EXACT = exact_answers()


def lg(v):
    return math.log10(v)


def test_known_answers_are_where_expected():
    # sanity of the reference itself: knee left of the half drop, steepest near the sigmoid centre
    e = EXACT
    assert e["min_lr"] < e["half_drop"] < e["max_lr"]
    assert abs(e["steepest"] - C) < 0.05
    assert abs(e["half_drop"] - C) < 0.05


@pytest.mark.parametrize("smooth", [0.0, 0.02])
def test_dense_curve_recovers_exact_window_and_picks(smooth):
    xs = [X0 + i * 0.005 for i in range(int((X1 - X0) / 0.005) + 1)]
    a = analyze([10 ** x for x in xs], [f(x) for x in xs], smooth_decades=smooth)
    lo, hi = a.window
    assert abs(lg(hi) - EXACT["max_lr"]) < 0.01
    assert abs(lg(lo) - EXACT["min_lr"]) < 0.02
    assert abs(lg(a.picks["half_drop"]) - EXACT["half_drop"]) < 0.005
    assert abs(lg(a.picks["steepest"]) - EXACT["steepest"]) < 0.02
    assert a.picks["log_midpoint"] == pytest.approx(log_midpoint(lo, hi))
    assert set(a.picks) == set(PICKS)


def test_half_decade_grid_is_coarse_but_brackets_the_answers():
    xs = [X0 + 0.5 * i for i in range(13)]
    a = analyze([10 ** x for x in xs], [f(x) for x in xs], smooth_decades=0.0)
    lo, hi = a.window
    assert abs(lg(hi) - EXACT["max_lr"]) <= 0.25 + 1e-9
    assert abs(lg(lo) - EXACT["min_lr"]) <= 0.5 + 1e-9
    assert abs(lg(a.picks["steepest"]) - EXACT["steepest"]) <= 0.25 + 1e-9


def test_derivatives_are_exact_on_a_quadratic_with_uneven_spacing():
    xs = [-3.0, -2.7, -2.0, -1.9, -1.0, -0.2, 0.5]
    ys = [3 * x * x + 2 * x + 1 for x in xs]
    for smooth in (0.0, 0.15, 1.0):
        v, d1, d2 = derivatives(xs, ys, smooth)
        for x, a, b, c in zip(xs, v, d1, d2):
            assert a == pytest.approx(3 * x * x + 2 * x + 1, abs=1e-9)
            assert b == pytest.approx(6 * x + 2, abs=1e-8)
            assert c == pytest.approx(6.0, abs=1e-7)


def test_three_point_rule_matches_finite_differences():
    xs, ys = [0.0, 0.5, 1.5], [1.0, 0.0, 2.0]
    _, d1, d2 = local_quadratic(xs, ys, 1, 0.0)
    # non-uniform second difference: 2 * (h1*y2 - (h1+h2)*y1 + h2*y0) / (h1*h2*(h1+h2))
    h1, h2 = 0.5, 1.0
    assert d2 == pytest.approx(2 * (h1 * 2.0 - (h1 + h2) * 0.0 + h2 * 1.0) / (h1 * h2 * (h1 + h2)))
    assert d1 == pytest.approx((-(h2 / (h1 * (h1 + h2))) * 1.0 + ((h2 - h1) / (h1 * h2)) * 0.0
                                + (h1 / (h2 * (h1 + h2))) * 2.0))


def test_curvature_formula():
    assert curvature([0.0, 1.0, -2.0], [2.0, 1.0, -1.0]) == pytest.approx(
        [2.0, 1.0 / 2 ** 1.5, -1.0 / 5 ** 1.5])


def test_half_drop_is_interpolated_linearly_in_log_lr():
    a = analyze([1e-3, 1e-2, 1e-1, 1.0], [2.0, 2.0, 1.0, 0.5], smooth_decades=0.0)
    # top 2, min 0.5, target 1.25: between x=-2 (2.0) and x=-1 (1.0) at 3/4 of the way
    assert lg(a.picks["half_drop"]) == pytest.approx(-1.25)
    assert a.window[1] == pytest.approx(1.0)


def test_min_lr_is_left_of_half_drop_even_when_a_sharper_kink_is_right_of_it():
    # footnote 1: the curvature minimum is searched only left of the half-drop point
    lrs = [10 ** (-5 + 0.5 * i) for i in range(11)]
    losses = [2.30, 2.30, 2.29, 2.2, 1.9, 1.5, 1.2, 1.1, 0.4, 0.35, 0.9]
    a = analyze(lrs, losses, smooth_decades=0.0)
    half = a.picks["half_drop"]
    assert a.window[0] <= half
    k_left = [k for x, k in zip(a.x, a.k) if x <= lg(half)]
    assert min(a.k) < min(k_left)  # the global minimum of k is right of half_drop ...
    assert a.k[a.i_knee] == min(k_left)  # ... and is ignored


def test_noisy_refined_cluster_smoothing_beats_raw_differences():
    # points packed 0.02 decades apart with small noise: plain second differences are dominated by
    # noise / h^2, the local fit is not
    rng = random.Random(0)
    xs = [X0 + 0.5 * i for i in range(13)]
    xs += [EXACT["min_lr"] - 0.6 + 0.02 * i for i in range(61)]
    xs = sorted(set(round(x, 9) for x in xs))
    ys = [f(x) + rng.gauss(0, 0.003) for x in xs]
    raw = analyze([10 ** x for x in xs], ys, smooth_decades=0.0)
    sm = analyze([10 ** x for x in xs], ys, smooth_decades=0.15)
    err_raw = abs(lg(raw.window[0]) - EXACT["min_lr"])
    err_sm = abs(lg(sm.window[0]) - EXACT["min_lr"])
    assert err_sm < 0.1
    assert err_raw > err_sm


def test_diverged_points_are_capped_not_infinite():
    xs = [X0 + 0.5 * i for i in range(13)]
    ys = [f(x) for x in xs]
    ys_div = ys[:-2] + [math.inf, math.nan]
    a = analyze([10 ** x for x in xs], ys, smooth_decades=0.0)
    b = analyze([10 ** x for x in xs], ys_div, smooth_decades=0.0)
    assert all(math.isfinite(v) for v in b.y + b.k)
    assert b.y[-1] == max(ys[:-2])
    assert b.window == a.window
    assert cap_losses([1.0, math.inf, 3.0, math.nan]) == [1.0, 3.0, 3.0, 3.0]
    assert cap_losses([math.inf]) == [0.0]


def test_curve_that_never_decreases_gives_a_zero_width_window_with_a_note():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    a = analyze(lrs, [1.0, 1.1, 1.5, 3.0])
    assert a.window == (1e-4, 1e-4)
    assert all(v == pytest.approx(1e-4) for v in a.picks.values())
    assert a.notes and "does not decrease" in a.notes[0]
    single = analyze([1e-3], [1.0])
    assert single.window == (1e-3, 1e-3)


def test_y_top_override_moves_half_drop():
    xs = [X0 + 0.25 * i for i in range(25)]
    ys = [f(x) for x in xs]
    a = analyze([10 ** x for x in xs], ys, smooth_decades=0.0)
    b = analyze([10 ** x for x in xs], ys, smooth_decades=0.0, y_top=ys[0] + 1.0)
    # a higher "learn nothing" level raises the half-drop target: reached at a smaller rate
    assert b.picks["half_drop"] < a.picks["half_drop"]
    target = (ys[0] + 1.0 + min(ys)) / 2
    j = max(i for i in range(len(ys)) if ys[i] >= target and i < ys.index(min(ys)))
    assert xs[j] <= lg(b.picks["half_drop"]) <= xs[j + 1]


@pytest.mark.parametrize(
    "lrs, losses, kw, match",
    [
        ([1e-3, 1e-2], [1.0], {}, "pair up"),
        ([1e-2, 1e-3], [1.0, 2.0], {}, "strictly increasing"),
        ([0.0, 1e-3], [1.0, 2.0], {}, "positive"),
        ([-1e-3, 1e-3], [1.0, 2.0], {}, "positive"),
        ([1e-3, 1e-2], [1.0, 2.0], {"smooth_decades": -0.1}, "smooth_decades"),
        ([1e-3, 1e-2], [1.0, 2.0], {"smooth_decades": math.nan}, "smooth_decades"),
        ([], [], {}, "empty"),
    ],
)
def test_bad_curves_raise_value_errors_naming_the_problem(lrs, losses, kw, match):
    with pytest.raises(ValueError, match=match):
        analyze(lrs, losses, **kw)


def test_log_midpoint_rejects_non_positive():
    assert log_midpoint(1e-4, 1e-2) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="positive"):
        log_midpoint(0.0, 1.0)
