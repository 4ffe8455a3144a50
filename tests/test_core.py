"""Unit tests of the shared plumbing: closure evaluation, buffer guard, exact line moves, math."""

import math

import pytest
import torch
from torch import nn

import autostep
from autostep._closure import BufferGuard, ClosureEvaluator, RNGSnapshot
from autostep._line import Line, axpy_
from autostep.distributed import Reducer
from autostep.optim import _functional as F


def test_rng_snapshot_replays_dropout():
    drop = nn.Dropout(0.5)
    x = torch.ones(100)
    snap = RNGSnapshot()
    a = drop(x)
    snap.restore()
    b = drop(x)
    c = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_buffer_guard_restores_in_place_and_replaced_buffers():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(()))
            self.register_buffer("last", torch.zeros(3))

        def forward(self, x):
            self.count += 1
            self.last = x.detach().clone()  # replaces the buffer object
            return x

    m = nn.Sequential(nn.BatchNorm1d(3), Counter())
    bn_mean = m[0].running_mean
    last = m[1].last
    guard = BufferGuard()
    with guard.watch():
        m(torch.randn(4, 3))
        m(torch.randn(4, 3))
    assert int(m[1].count) == 2
    guard.restore()
    assert int(m[1].count) == 0
    assert m[1].last is last and torch.equal(last, torch.zeros(3))
    assert m[0].running_mean is bn_mean and torch.equal(bn_mean, torch.zeros(3))
    assert int(m[0].num_batches_tracked) == 0
    assert [type(x) for x in guard.modules()] == [nn.Sequential, nn.BatchNorm1d, Counter]


def test_buffer_guard_hook_is_removed():
    guard = BufferGuard()
    with guard.watch():
        pass
    m = nn.BatchNorm1d(2)
    m(torch.randn(3, 2))
    assert guard.modules() == []


def test_evaluator_counts_and_returns_start_loss():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    ev = ClosureEvaluator(lambda: (w ** 2).sum(), [w])
    loss = ev.first()
    assert float(loss) == 5.0 and ev.loss0 == 5.0
    assert torch.equal(w.grad, torch.tensor([2.0, 4.0]))
    with torch.no_grad():
        w.mul_(0.5)
    assert ev.trial() == 1.25
    assert ev.forwards == 2 and ev.backwards == 1


@pytest.mark.parametrize("loss_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("extra_dtype", [torch.float16, torch.float32, torch.float64])
def test_read_start_returns_the_exact_values_of_any_float_widths(loss_dtype, extra_dtype):
    # one cat in the inputs' own dtypes (promoted exactly) instead of float64 conversions first
    w = nn.Parameter(torch.tensor([1.1, 2.3]))
    ev = ClosureEvaluator(lambda: (w ** 2).sum().to(loss_dtype) / 3, [w])
    loss = ev.first(read=False)
    extra = torch.tensor([0.1, 1e-7, 3.3e4], dtype=extra_dtype)
    got = ev.read_start(extra)
    assert ev.loss0 == float(loss.double()) and got == extra.double().tolist()
    assert ev.loss_eps == torch.finfo(loss_dtype).eps


def test_evaluator_clears_its_own_old_gradients_and_uses_foreign_ones():
    w = nn.Parameter(torch.tensor([1.0]))
    owner = type("Owner", (), {})()
    ev = ClosureEvaluator(lambda: (3 * w).sum(), [w], owner=owner)
    ev.first()
    assert torch.equal(w.grad, torch.tensor([3.0])) and not ev.given
    # the optimizer's own gradient from the last step is stale: cleared, back-propagated again
    ev = ClosureEvaluator(lambda: (5 * w).sum(), [w], owner=owner)
    ev.first()
    assert torch.equal(w.grad, torch.tensor([5.0])) and ev.backwards == 1
    # a gradient computed outside step() (accelerate, a backward of the user's) is the step's
    w.grad = torch.tensor([100.0])
    ev = ClosureEvaluator(lambda: (3 * w).sum(), [w], owner=owner)
    ev.first()
    assert torch.equal(w.grad, torch.tensor([100.0])) and ev.given and ev.backwards == 0
    # all-zero foreign gradients (zero_grad(set_to_none=False)) are not gradients
    w.grad = torch.zeros(1)
    ev = ClosureEvaluator(lambda: (3 * w).sum(), [w], owner=owner)
    ev.first()
    assert torch.equal(w.grad, torch.tensor([3.0])) and not ev.given


def test_evaluator_nan_trial_is_inf():
    w = nn.Parameter(torch.tensor([1.0]))
    calls = []

    def closure():
        calls.append(1)
        return w.sum() * (math.nan if len(calls) > 1 else 1.0)

    ev = ClosureEvaluator(closure, [w])
    ev.first()
    assert ev.trial() == math.inf


def test_zero_grad_in_a_trial_cannot_touch_the_gradients():
    w = nn.Parameter(torch.tensor([1.0]))
    opt_like = torch.optim.SGD([w], lr=0.1, foreach=False)

    def closure():
        if not torch.is_grad_enabled():
            opt_like.zero_grad(set_to_none=False)
            w.grad = torch.zeros(1)
        return (w ** 2).sum()

    ev = ClosureEvaluator(closure, [w])
    ev.first()
    g = w.grad
    ev.trial()
    assert w.grad is g and torch.equal(g, torch.tensor([2.0]))


def test_closure_none_and_not_callable():
    with pytest.raises(autostep.ClosureError, match="needs a closure"):
        ClosureEvaluator(None, [])
    with pytest.raises(autostep.ClosureError, match="returns the loss"):
        ClosureEvaluator(3.0, [])


def test_closure_returning_none_gets_a_hint():
    w = nn.Parameter(torch.tensor([1.0]))
    with pytest.raises(autostep.ClosureError, match="return loss"):
        ClosureEvaluator(lambda: None, [w]).first()


def test_line_moves_are_exact_and_restore_bitwise():
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(7, 3)), nn.Parameter(torch.randn(5))]
    w0 = [p.detach().clone() for p in ps]
    d = [torch.randn_like(p) for p in ps]
    line = Line([ps], [d])
    for s in (0.3, 1e-3, 7.0, 0.3):
        line.move([s])
        for p, a, b in zip(ps, w0, d):
            assert torch.equal(p, a - s * b) or torch.equal(p, torch.add(a, b, alpha=-s))
    line.move([0.3])
    at_03 = [p.detach().clone() for p in ps]
    line.move([5.0])
    line.move([0.3])
    assert all(torch.equal(p, q) for p, q in zip(ps, at_03))
    line.restore()
    assert all(torch.equal(p, q) for p, q in zip(ps, w0))


def test_line_addcdiv_direction_and_per_tensor_scales():
    ps = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
    num = [torch.full((3,), 2.0), torch.full((2,), 4.0)]
    den = [torch.full((3,), 4.0), torch.full((2,), 2.0)]
    line = Line([ps], [(num, den)])
    line.move([[1.0, 0.5]])
    assert torch.allclose(ps[0], torch.full((3,), 0.5))
    assert torch.allclose(ps[1], torch.full((2,), 0.0))
    direct = [torch.ones(3), torch.ones(2)]
    axpy_(direct, (num, den), [1.0, 0.5])
    assert all(torch.equal(a, b) for a, b in zip(direct, ps))


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e40), (torch.float16, 1e6),
                                         (torch.bfloat16, 1e39)])
def test_axpy_scales_beyond_the_dtype_range(dtype, scale):
    # a scale that does not fit the scalar type of the fused op (a normalised step along a tiny
    # direction) made it raise; such a move is computed in float64, then rounded to the dtype.
    # Scales the fused op takes stay on it (bitwise as before): _foreach_add_'s alpha is converted
    # to the parameter's dtype, addcdiv's value and mul's scalars to float32 for the half types
    d = torch.full((3,), 1.0 / scale, dtype=torch.float64).to(dtype)
    den = torch.full((3,), 2.0, dtype=dtype)
    ones = lambda: [torch.ones(3, dtype=dtype)]
    wide = lambda per: torch.ones(3, dtype=dtype) - (d.double() * scale * per).to(dtype)
    f32_max = torch.finfo(torch.float32).max
    # plain direction, one scale: alpha in the parameter's dtype
    ps = ones()
    axpy_(ps, [d], scale)
    assert torch.equal(ps[0], wide(1.0)) and abs(float(ps[0][0])) < 1.0  # a step of ordinary size
    # (num, den) direction, one scale and per-tensor scales: float32 scalars
    for s in (scale, [scale, 0.0]):
        ps = ones() + [torch.ones(2, dtype=dtype)]
        axpy_(ps, ([d, torch.ones(2, dtype=dtype)], [den, torch.ones(2, dtype=dtype)]), s)
        if scale > f32_max:
            assert torch.equal(ps[0], wide(0.5))
        else:
            fused = ones()
            torch._foreach_addcdiv_(fused, [d], [den], value=-scale)
            assert torch.equal(ps[0], fused[0])
        assert torch.equal(ps[1], torch.ones(2, dtype=dtype) - (0.0 if isinstance(s, list) else scale))
    # plain direction, per-tensor scales (a NaN first must not hide the large one)
    ps = [torch.ones(3, dtype=dtype), torch.ones(3, dtype=dtype)]
    axpy_(ps, [d, d], [float("nan"), scale])
    assert torch.isnan(ps[0]).all()
    if scale > f32_max:
        assert torch.equal(ps[1], wide(1.0))
    else:
        fused = ones()
        torch._foreach_add_(fused, torch._foreach_mul([d], [-scale]))
        assert torch.equal(ps[1], fused[0])
    # a Line's move goes through the same path
    ps = [nn.Parameter(torch.ones(3, dtype=dtype))]
    line = Line([ps], [[d]])
    line.move([scale])
    assert torch.equal(ps[0].detach(), wide(1.0))
    line.restore()
    assert torch.equal(ps[0].detach(), torch.ones(3, dtype=dtype))


def test_reducer_is_identity_without_distributed():
    r = Reducer()
    assert not r.active
    assert r.mean([1.5, -2.0]) == [1.5, -2.0]


def test_functional_math():
    assert F.c_h(0.6, 1.0) == 0.6
    assert F.c_h(0.6, -1.0) == pytest.approx(1 / 0.6)
    assert F.c_h(0.6, 0.0) == pytest.approx(1 / 0.6)
    assert F.armijo_rhs([0.1, 0.2], [1.0, 2.0], [3.0, 4.0]) == pytest.approx(0.3 + 1.6)
    assert F.armijo_rhs([0.5], [2.0], [-1.0], momentum_aware=True) == pytest.approx(-4.0)
    assert F.armijo_holds(1.0, 1.0) and not F.armijo_holds(0.99, 1.0)
    assert not F.armijo_holds(-math.inf, -1e9) and not F.armijo_holds(math.nan, 0.0)
    assert F.ema(1.0, 3.0, 0.9) == pytest.approx(1.2)
    assert F.bias_corrected(0.1, 0.9, 1) == pytest.approx(1.0)
    assert F.grow(1.0, 500, 500) == pytest.approx(2.0)
    assert F.amortize_interval(0.1, 10) == 10
    assert F.amortize_interval(0.5, 10) == 2
    assert F.amortize_interval(2.0, 10) == 1
    assert F.amortize_interval(0.0, 7) == 7
    assert F.amortize_interval(0.01, 1) == 1


def test_mean_log_loss():
    assert autostep.mean_log_loss([1.0, math.e, math.e ** 2]) == pytest.approx(1.0)
    assert autostep.mean_log_loss([1.5, 2.0], optimum=1.0) == pytest.approx((math.log(0.5) + 0.0) / 2)
    with pytest.raises(ValueError, match="not finite"):
        autostep.mean_log_loss([1.0, math.nan])
    assert autostep.mean_log_loss([1.0, math.inf], diverged_value=10.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="optimum"):
        autostep.mean_log_loss([0.5], optimum=1.0)
    with pytest.raises(ValueError, match="at least one"):
        autostep.mean_log_loss([])


def test_hot_path_no_grad_decorator(monkeypatch):
    from autostep._grad_mode import no_grad
    seen = []

    @no_grad
    def f(x, fail=False):
        """doc"""
        seen.append(torch.is_grad_enabled())
        if fail:
            raise ValueError("boom")
        return x * 2

    assert f.__doc__ == "doc" and f.__name__ == "f"
    assert f(3) == 6 and seen == [False] and torch.is_grad_enabled()
    with pytest.raises(ValueError):
        f(1, fail=True)
    assert torch.is_grad_enabled()  # restored after an exception
    entered = []
    real_enter = torch.no_grad.__enter__
    monkeypatch.setattr(torch.no_grad, "__enter__", lambda self: (entered.append(1), real_enter(self))[1])
    with torch.no_grad():
        n = len(entered)
        f(1)
        assert len(entered) == n and seen[-1] is False  # already off: no new context
    f(1)
    assert len(entered) == n + 1  # on: entered once
    w = nn.Parameter(torch.ones(2))
    axpy_([w], [torch.ones(2)], 0.5)  # in-place on a leaf that requires grad, outside step()
    assert torch.equal(w.detach(), torch.full((2,), 0.5))
