"""PAL: exact line minimum on quadratics, the fallback cases, momentum, groups, counters."""

import math

import pytest
import torch
from torch import nn

from autostep.optim.pal import PAL


def quad(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
    c = torch.randn(n, generator=g, dtype=torch.float64)
    return A, w, c


def exact_min(A, w0, c, d):
    """Minimum of l(s) = 0.5 sum A (w0 - s u - c)^2 with u = d / ||d||."""
    u = d / d.norm()
    return float((u * A * (w0 - c)).sum() / (u * A * u).sum())


@pytest.mark.parametrize("alpha", [1.0, 1.66])
def test_step_is_alpha_times_exact_line_minimum(alpha):
    A, w, c = quad()
    opt = PAL([w], alpha=alpha, max_step=100.0)
    w0 = w.detach().clone()
    g = A * (w0 - c)
    s_star = exact_min(A, w0, c, g)
    opt.step(lambda: 0.5 * (A * (w - c) ** 2).sum())
    info = opt.last_step
    assert info["case"] == "parabola"
    assert info["update_length"] == pytest.approx(alpha * s_star, rel=1e-6)
    assert torch.allclose(w.detach(), w0 - alpha * s_star * g / g.norm(), rtol=1e-10, atol=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(alpha * s_star / float(g.norm()), rel=1e-6)
    assert (opt.forwards, opt.backwards, opt.trials, opt.steps) == (2, 1, 1, 1)
    assert info["b"] == pytest.approx(-float(g.norm()))


def test_max_step_caps_the_update():
    A, w, c = quad()
    opt = PAL([w], alpha=1.0, max_step=1e-3)
    w0 = w.detach().clone()
    opt.step(lambda: 0.5 * (A * (w - c) ** 2).sum())
    assert opt.update_length == 1e-3
    assert float((w.detach() - w0).norm()) == pytest.approx(1e-3, rel=1e-9)


def test_concave_line_takes_the_tested_point_exactly():
    w = nn.Parameter(torch.tensor([0.3, -0.2]))
    opt = PAL([w], measuring_step=0.1)
    seen = []

    def closure():
        seen.append(w.detach().clone())
        return -(w ** 2).sum() + w.sum()  # concave along every line

    opt.step(closure)
    assert opt.last_step["case"] == "concave" and opt.update_length == 0.1
    assert torch.equal(w.detach(), seen[1])  # the applied point is bitwise the tested point


def test_ascent_direction_and_zero_gradient_are_skipped():
    # momentum turns the direction against the gradient on the second step
    w = nn.Parameter(torch.tensor([1.0]))
    opt = PAL([w], momentum=0.9, measuring_step=0.1)
    opt.step(lambda: (5 * w).sum())  # g = 5, direction +5
    before = w.detach().clone()
    opt.step(lambda: (-1 * w).sum())  # g = -1, d = -1 + 0.9 * 5 > 0: <g, d> < 0 -> ascent
    assert opt.last_step["case"] == "ascent" and torch.equal(w.detach(), before)
    assert opt.skipped_steps == 1 and opt.param_groups[0]["lr"] == 0.0
    # zero gradient: no trial forward
    v = nn.Parameter(torch.tensor([0.0]))
    opt2 = PAL([v])
    opt2.step(lambda: (v ** 2).sum())
    assert opt2.last_step["case"] == "zero direction" and opt2.trials == 0 and opt2.forwards == 1


def test_nonfinite_trial_restores_the_start_point():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = PAL([w])
    before = w.detach().clone()
    calls = []

    def closure():
        calls.append(1)
        loss = (w ** 2).sum()
        return loss if len(calls) == 1 else loss * math.inf

    opt.step(closure)
    assert opt.last_step["case"] == "nonfinite"
    assert torch.equal(w.detach(), before)


def test_momentum_direction_and_exact_slope():
    A, w, c = quad(seed=3)
    opt = PAL([w], momentum=0.4, alpha=1.0, max_step=100.0)
    closure = lambda: 0.5 * (A * (w - c) ** 2).sum()  # noqa: E731
    g1 = A * (w.detach() - c)
    opt.step(closure)
    w1 = w.detach().clone()
    g2 = A * (w1 - c)
    d = g2 + 0.4 * g1
    opt.step(closure)
    assert opt.last_step["b"] == pytest.approx(-float((g2 * d).sum() / d.norm()), rel=1e-9)
    s_star = exact_min(A, w1, c, d)
    assert opt.update_length == pytest.approx(s_star, rel=1e-6)
    assert torch.allclose(opt.state[w]["momentum_buffer"], d)


def test_one_line_through_all_groups_and_validation():
    A, w, c = quad()
    v = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = PAL([{"params": [w]}, {"params": [v], "momentum": 0.3}], alpha=1.0, max_step=100.0)
    w0, v0 = w.detach().clone(), v.detach().clone()
    opt.step(lambda: 0.5 * (A * (w - c) ** 2).sum() + (v ** 2).sum())
    g = torch.cat([A * (w0 - c), 2 * v0])
    moved = torch.cat([w0 - w.detach(), v0 - v.detach()])
    assert torch.allclose(moved / moved.norm(), g / g.norm())
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] > 0
    with pytest.raises(ValueError, match="measuring_step must be the same"):
        PAL([{"params": [w]}, {"params": [v], "measuring_step": 1.0}])
    for bad in ({"measuring_step": 0.0}, {"alpha": -1.0}, {"max_step": math.nan},
                {"momentum": 1.0}, {"lr": -0.1}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            PAL([w], **bad)


def test_trains_digits_mlp():
    from autostep.bench.tasks import digits_mlp

    pb = digits_mlp(0)
    opt = PAL(pb.model.parameters())
    before = pb.evaluate("train").loss
    for xb, yb in pb.batches(150, seed=0):
        opt.step(lambda: pb.loss_fn(pb.model, (xb, yb)))
    assert pb.evaluate("train").loss < 0.5 * before
    assert opt.forwards == 300 and opt.backwards == 150


def test_update_length_its_older_name_and_older_checkpoints():
    import copy

    A, w, c = quad()
    opt = PAL([w], alpha=1.0, max_step=100.0)
    opt.step(lambda: 0.5 * (A * (w - c) ** 2).sum())
    assert opt.update_length > 0 and opt.last_step["update_length"] == opt.update_length
    with pytest.warns(DeprecationWarning, match="PAL.step_size is now called update_length"):
        assert opt.step_size == opt.update_length
    old = copy.deepcopy(opt.state_dict())  # the older version kept it as "step_size"
    ls = old["param_groups"][0]["autostep"]
    ls["step_size"] = ls.pop("update_length")
    opt2 = PAL([nn.Parameter(w.detach().clone())], alpha=1.0, max_step=100.0)
    opt2.load_state_dict(old)
    assert opt2.update_length == opt.update_length and "step_size" not in opt2._ls


@pytest.mark.parametrize("dtype,g", [(torch.float32, 2e-44), (torch.float16, 1.2e-7)])
def test_a_tiny_gradient_does_not_raise(dtype, g):
    # the measuring step mu / ||d|| exceeded the dtype's range for a tiny ||d||: the foreach move
    # raised "value cannot be converted to type float without overflow"
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10).to(dtype))
    opt = PAL([w])
    for _ in range(5):
        opt.step(lambda: ((w.float() - 1) ** 2).sum())
    for _ in range(3):
        opt.step(lambda: (w.float() * g).sum().to(dtype))
    assert torch.isfinite(w).all()
