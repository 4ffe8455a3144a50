"""The one least-squares parabola fit (autostep._quadratic), used by AutoLR, the LR search's curve
and the loss-along-lines diagnostic."""

import numpy as np
import pytest

from autostep._quadratic import fit_parabola, solve3
from autostep.autolr import probe_offsets, quadratic_argmin
from autostep.optim import _parabola as P


@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("lr,k", [(0.1, (2.3, -0.7, 4.1)), (1e-3, (0.41, 3e-3, 250.0)),
                                  (1e-5, (1.7, -2e-4, 9e3)), (0.5, (0.02, 0.3, 1.5))])
def test_fit_recovers_exact_quadratic_at_autolr_offsets(n, lr, k):
    offs = probe_offsets(lr, 1.0, n, 0.5)
    losses = [k[0] + k[1] * e + k[2] * e * e for e in offs]
    k2, k1, k0 = fit_parabola(offs, losses)
    assert abs(k0 - k[0]) < 1e-9 * max(1, abs(k[0]))
    assert abs(-k1 / (2 * k2) - (-k[1] / (2 * k[2]))) < 1e-6
    assert quadratic_argmin(k1, k2) == pytest.approx(-k[1] / (2 * k[2]), abs=1e-6)


def test_fit_matches_numpy_polyfit_on_noisy_samples():
    rng = np.random.default_rng(0)
    x = np.linspace(-0.05, 0.05, 5)
    y = 1.0 + 0.3 * x + 7 * x ** 2 + rng.normal(0, 1e-3, 5)
    assert np.allclose(fit_parabola(x.tolist(), y.tolist()), np.polyfit(x, y, 2), rtol=1e-9, atol=1e-12)


def test_fit_matches_numpy_polyfit_off_centre_and_fit_error():
    rng = np.random.default_rng(1)
    xs = np.linspace(-0.5, 1.5, 41) + 3.0
    ys = 0.3 * xs ** 2 - 2 * xs + 1 + 0.01 * rng.normal(size=xs.size)
    got = fit_parabola(xs.tolist(), ys.tolist())
    assert got == pytest.approx(tuple(np.polyfit(xs, ys, 2)), rel=1e-7, abs=1e-9)
    err = P.fit_error(xs, ys, got)
    ref = np.mean(np.abs(np.polyval(np.polyfit(xs, ys, 2), xs) - ys))
    assert err == pytest.approx(ref, rel=1e-6)


def test_weighted_fit_about_a_centre_matches_numpy():
    rng = np.random.default_rng(2)
    xs = np.sort(rng.uniform(-3, 1, 12))
    ys = np.cos(xs) + 0.01 * rng.normal(size=12)
    w = np.exp(-0.5 * ((xs - xs[4]) / 0.7) ** 2)
    got = fit_parabola(xs.tolist(), ys.tolist(), w.tolist(), center=float(xs[4]), scale=0.7)
    # numpy.polyfit weights multiply the residuals, so sqrt of least-squares weights
    assert got == pytest.approx(tuple(np.polyfit(xs - xs[4], ys, 2, w=np.sqrt(w))), rel=1e-8, abs=1e-10)


def test_three_points_interpolate_like_fit3():
    xs, ys = [0.0, 0.3, 0.7], [1.0, 0.2, 0.9]
    assert fit_parabola(xs, ys) == pytest.approx(P.fit3(xs, ys), rel=1e-12)


def test_fit_rejects_degenerate_input_and_reports_singular_systems():
    with pytest.raises(ValueError, match="distinct"):
        fit_parabola([0.0, 0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one y"):
        fit_parabola([0.0, 1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="weight"):
        fit_parabola([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 1.0])
    # all weight on one point: singular normal equations give None, not garbage
    assert fit_parabola([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0]) is None


def test_solve3_pivots_and_flags_singular():
    assert solve3([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [2.0, 3.0, 4.0]) == [3.0, 2.0, 2.0]
    assert solve3([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]], [1.0, 2.0, 3.0]) is None
    assert solve3([[1.0, 0.0, 0.0], [0.0, 1e-14, 0.0], [0.0, 0.0, 1.0]], [1.0, 1.0, 1.0], rtol=1e-12) is None
