"""Cost properties of the Armijo hot path that do not depend on timing (issue 13).

* host synchronisations: every device-to-host read (``.item()``, ``.tolist()``, ``float``/``int``/
  ``bool`` of a tensor) inside ``step()`` is counted by patching those methods; a step may read at
  most ``1 + trials`` times (the start loss and decrease terms together, then one loss per trial);
* the step is transactional for the Adam moments: a trial that raises leaves them untouched;
* the fused multi-segment moves give bitwise the points per-segment moves give.
"""

import collections
import contextlib
import math

import pytest
import torch
from torch import nn

import autostep
from autostep._line import Line, axpy_
from counting import count_calls

ARMIJO = {
    "SLS": lambda p: autostep.SLS(p),
    "AdamSLS": lambda p: autostep.AdamSLS(p),
    "SALSA": lambda p: autostep.SALSA(p),
    "SALSA-sgd": lambda p: autostep.SALSA(p, direction="sgd", lr=1.0, max_lr=10.0),
    "SALSA-amortized": lambda p: autostep.SALSA(p, amortize=5),
    "ALSALS": lambda p: autostep.ALSALS(p),
    "ALSALS-smooth-amortized": lambda p: autostep.ALSALS(p, smooth=0.9, amortize=5),
    "PLASLS": lambda p: autostep.PLASLS(p),
}


class HostReads:
    """Counts host reads of tensor values made through Python while active."""

    METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self):
        self.count = 0
        self.where: list[str] = []

    @contextlib.contextmanager
    def patched(self):
        originals = {name: getattr(torch.Tensor, name) for name in self.METHODS}

        def counting(name, fn):
            def wrapper(t, *a, **k):
                self.count += 1
                self.where.append(name)
                return fn(t, *a, **k)
            return wrapper

        try:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, counting(name, fn))
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    return model, x, y


@pytest.mark.parametrize("name", sorted(ARMIJO))
def test_host_reads_per_step_at_most_one_plus_trials(name):
    model, x, y = _problem()
    opt = ARMIJO[name](model.parameters())
    reads = HostReads()
    per_step = []
    for k in range(40):
        xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
        before = reads.count
        with reads.patched():
            opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
        n = reads.count - before
        trials = opt.last_step["trials"]
        per_step.append((n, trials))
        assert n <= 1 + trials, (k, n, trials, reads.where[before:])
        assert n >= 1  # the start loss is read: the counter sees the reads it must see
    # the searches did run trials (so the bound was exercised with trials > 0)
    assert any(t > 0 for _, t in per_step)


@pytest.mark.parametrize("name", ["SALSA", "ALSALS", "PLASLS"])
def test_host_reads_with_a_torch_style_closure(name):
    model, x, y = _problem()
    opt = ARMIJO[name](model.parameters())
    reads = HostReads()

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(10):
        before = reads.count
        with reads.patched():
            opt.step(closure)
        assert 1 <= reads.count - before <= 1 + opt.last_step["trials"]


def test_a_zero_direction_step_reads_once_and_costs_no_forward():
    w = nn.Parameter(torch.zeros(5))
    opt = autostep.SALSA([w])
    reads = HostReads()
    with reads.patched():
        opt.step(lambda: (w * 0.0).sum() + 1.0)
    assert reads.count == 1
    assert opt.last_step["skipped"] == "zero direction" and opt.last_step["forwards"] == 1


@pytest.mark.parametrize("name", ["AdamSLS", "SALSA", "ALSALS", "PLASLS"])
def test_an_exception_in_a_trial_leaves_the_moments_untouched(name):
    model, x, y = _problem()
    opt = ARMIJO[name](model.parameters())
    for _ in range(3):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    moments = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
               for p, st in opt.state.items()}
    params = [p.detach().clone() for p in model.parameters()]
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 2:  # the first trial
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    for p, st in opt.state.items():
        for k, v in st.items():
            old = moments[id(p)][k]
            assert (torch.equal(v, old) if torch.is_tensor(v) else v == old), k
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


def test_a_non_finite_gradient_skips_the_step_before_any_state_changes():
    model, x, y = _problem()
    opt = autostep.SALSA(model.parameters())
    for _ in range(3):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
             for p, st in opt.state.items()}
    params = [p.detach().clone() for p in model.parameters()]
    w = model[0].weight

    def closure():  # finite loss, infinite gradient
        return nn.functional.cross_entropy(model(x), y) + torch.sqrt(w[0, 0] - w[0, 0].detach())

    opt.step(closure)
    assert opt.last_step["skipped"] == "non-finite gradient"
    assert opt.last_step["forwards"] == 1
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    for p, st in opt.state.items():
        for k, v in st.items():
            old = state[id(p)][k]
            assert (torch.equal(v, old) if torch.is_tensor(v) else v == old), k


def test_fused_moves_equal_per_segment_moves_bitwise():
    torch.manual_seed(0)
    shapes = [(7, 3), (3,), (5, 5), (5,)]
    params = [torch.randn(s) for s in shapes]
    num = [torch.randn(s) for s in shapes]
    den = [torch.rand(s) + 0.1 for s in shapes]
    segs = [params[:2], params[2:]]
    scales = [[0.3, 0.7], 1.3]
    line = Line(segs, [(num[:2], den[:2]), (num[2:], den[2:])])
    line.move(scales)
    fused = [p.clone() for p in params]
    line.restore()
    ref = [p.clone() for p in params]
    axpy_(ref[:2], (num[:2], den[:2]), [0.3, 0.7])
    axpy_(ref[2:], (num[2:], den[2:]), 1.3)
    assert all(torch.equal(a, b) for a, b in zip(fused, ref))
    # plain directions, one step size per segment
    line = Line(segs, [num[:2], num[2:]])
    line.move([0.5, 0.25])
    fused = [p.clone() for p in params]
    line.restore()
    ref = [p.clone() for p in params]
    axpy_(ref[:2], num[:2], 0.5)
    axpy_(ref[2:], num[2:], 0.25)
    assert all(torch.equal(a, b) for a, b in zip(fused, ref))


def test_scratch_sums_per_segment_flat_and_per_tensor():
    a, b, c = torch.randn(4, 3), torch.randn(2), torch.randn(3, dtype=torch.float64)
    flat = Line([[a], [b]], [None, None], save=False)
    assert flat._flat is not None
    for buf, src in zip([t for seg in flat.scratch for t in seg], [a, b]):
        buf.copy_(src)
    sums = flat.scratch_sums()
    assert torch.allclose(sums, torch.stack([a.sum(), b.sum()]))
    mixed = Line([[a], [c]], [None, None], save=False)  # two dtypes: one buffer per tensor
    assert mixed._flat is None
    for buf, src in zip([t for seg in mixed.scratch for t in seg], [a, c]):
        buf.copy_(src)
    assert torch.allclose(mixed.scratch_sums().double(), torch.stack([a.sum().double(), c.sum()]))
    mixed.save()
    with pytest.raises(RuntimeError, match="holds w0"):
        mixed.scratch


@pytest.mark.parametrize("with_den", [False, True])
def test_decrease_terms_cpu_and_foreach_paths_agree(monkeypatch, with_den):
    import autostep.optim._armijo_plan as base

    torch.manual_seed(1)
    shapes = [[(4, 3), (3,)], [(5,)]]
    params = [[torch.randn(s) for s in seg] for seg in shapes]
    xs = [[torch.randn(s) for s in seg] for seg in shapes]
    ys = [[torch.randn(s) for s in seg] for seg in shapes]
    dens = [[torch.rand(s) + 0.5 for s in seg] for seg in shapes] if with_den else None
    expected = torch.stack([
        sum((x * (y / d if dens else y)).sum() for x, y, d in zip(xs[j], ys[j], (dens or [[None] * 2] * 2)[j]))
        for j in range(2)])
    cpu = base.decrease_terms(Line(params, [None, None], save=False), xs, ys, dens)
    monkeypatch.setattr(base, "_on_cpu", lambda buf: False)
    fused = base.decrease_terms(Line(params, [None, None], save=False), xs, ys, dens)
    assert torch.allclose(cpu, expected, rtol=1e-5) and torch.allclose(fused, expected, rtol=1e-5)


def test_finite_hint_proves_finiteness_and_flags_inf_nan():
    from autostep import _validate as V

    ok = [torch.randn(5, 3), torch.randn(4)]
    assert torch.isfinite(V.finite_hint(ok))
    for bad in (math.inf, -math.inf, math.nan):
        ts = [t.clone() for t in ok]
        ts[1][2] = bad
        assert not torch.isfinite(V.finite_hint(ts))
        assert not torch.isfinite(V.tensor_list_finite(ts))
    # finite values whose squares overflow float32: the hint is not finite, the exact test is
    huge = [torch.full((3,), 1e25)]
    assert not torch.isfinite(V.finite_hint(huge))
    assert torch.isfinite(V.tensor_list_finite(huge))


@pytest.mark.parametrize("name", ["LABPAL", "SALSA-amortized", "PAL"])
def test_finite_gradients_skip_the_slow_exact_check(monkeypatch, name):
    """The exact inf-norm check (element by element on CPU, as long as a backward) runs only when
    the fast hint is not finite; a huge but finite gradient still takes the step."""
    from autostep import _validate as V

    calls = count_calls(monkeypatch, V, "tensor_list_finite")
    model, x, y = _problem()
    make = {"LABPAL": lambda p: autostep.LABPAL(p, approx_batches=2, reuse_steps=5),
            "PAL": lambda p: autostep.PAL(p), "SALSA-amortized": ARMIJO["SALSA-amortized"]}[name]
    opt = make(model.parameters())
    for _ in range(30):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    assert calls["n"] == 0
    assert opt.skipped_steps == 0 or name == "PAL"
    # a loss scaled by 1e25: gradients ~1e25 are finite, their float32 squares are not
    before = opt.nonfinite_steps
    opt.step(lambda: 1e25 * nn.functional.cross_entropy(model(x), y))
    assert calls["n"] >= 1 and opt.nonfinite_steps == before


def test_next_interval_doubles_keeps_halves_and_resets_on_drift():
    from autostep.optim import _functional as F

    assert F.next_interval(1, 1, 0.0, 10) == 2  # accepted at the first trial: double
    assert F.next_interval(8, 1, 0.05, 10) == 10  # never above k_max
    assert F.next_interval(4, 2, 0.05, 10) == 4  # one backtrack: keep
    assert F.next_interval(4, 3, 0.05, 10) == 2  # more: halve
    assert F.next_interval(1, 9, 0.05, 10) == 1
    assert F.next_interval(8, 1, 0.6, 10) == 1  # the step size moved by > 50 % lately
    assert F.next_interval(8, 1, math.nan, 10) == 1
    assert F.next_interval(8, 1, 0.0, 1) == 1  # amortize off


def test_amortised_reuse_skips_trial_snapshots_and_reads_once():
    """A reused step evaluates nothing after its first evaluation: one host read, no generator
    snapshot for trials, and the bookkeeping says so."""
    from autostep._closure import evaluator as E

    model, x, y = _problem()
    opt = ARMIJO["SALSA-amortized"](model.parameters())
    snaps = {"n": 0}
    real = E.RNGSnapshot

    class Counting(real):
        def __init__(self):
            snaps["n"] += 1
            super().__init__()

    reads = HostReads()
    reused = 0
    for _ in range(40):
        before, s0 = reads.count, snaps["n"]
        E.RNGSnapshot = Counting
        try:
            with reads.patched():
                opt.step(lambda: nn.functional.cross_entropy(model(x), y))
        finally:
            E.RNGSnapshot = real
        if opt.last_step.get("reused"):
            reused += 1
            assert reads.count - before == 1
            assert snaps["n"] - s0 == 1  # the one taken before the first evaluation
    assert reused > 10


def test_labpal_update_reads_the_host_once():
    model, x, y = _problem()
    opt = autostep.LABPAL(model.parameters(), approx_batches=2, reuse_steps=50)
    reads = HostReads()
    updates = 0
    for k in range(20):
        xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
        phase = opt.phase
        before = reads.count
        with reads.patched():
            opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
        if phase == "train":
            updates += 1
            assert reads.count - before == 1, reads.where[before:]
    assert updates >= 10


def test_plain_nsgd_update_reads_its_norm_with_the_loss(monkeypatch):
    """LABPAL NSGD along the raw gradient: the update's ||g||^2 comes back with the start loss and
    serves as the finiteness hint (one norm pass, one host read per update; were two each), and
    the update is the same as with the norm computed on its own (momentum 0.0 vs 1e-300 takes the
    other path: the buffered direction, equal to the gradient in value)."""
    calls = count_calls(monkeypatch, torch, "_foreach_norm")
    runs = {}
    for momentum in (0.0, 1e-300):
        model, x, y = _problem()
        opt = autostep.LABPAL(model.parameters(), mode="nsgd", approx_batches=2, reuse_steps=50,
                              momentum=momentum)
        reads = HostReads()
        updates = 0
        for k in range(12):
            xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
            phase = opt.phase
            before, norms = reads.count, calls["n"]
            with reads.patched():
                opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
            if phase == "train" and momentum == 0.0:
                updates += 1
                assert reads.count - before == 1, reads.where[before:]
                assert calls["n"] - norms == 1
        runs[momentum] = [p.detach().clone() for p in model.parameters()]
        if momentum == 0.0:
            assert updates >= 8
    for a, b in zip(runs[0.0], runs[1e-300]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["SLS", "SALSA", "ALSALS", "PLASLS", "SALSA-amortized"])
def test_clipping_reads_no_more_and_equals_the_host_coefficient(monkeypatch, name):
    """max_grad_norm: the coefficient stays on the device and comes back with the one read before
    the trials (reads <= 1 + trials), and the run is bitwise the run with the host coefficient."""
    from autostep.optim._optimizer import AutostepOptimizer

    make = {"SLS": lambda p: autostep.SLS(p, max_grad_norm=0.3),
            "SALSA": lambda p: autostep.SALSA(p, max_grad_norm=0.3),
            "ALSALS": lambda p: autostep.ALSALS(p, max_grad_norm=0.3),
            "PLASLS": lambda p: autostep.PLASLS(p, max_grad_norm=0.3),
            "SALSA-amortized": lambda p: autostep.SALSA(p, max_grad_norm=0.3, amortize=5)}[name]

    def run(host: bool):
        model, x, y = _problem()
        opt = make(model.parameters())
        reads, clips = HostReads(), []
        for k in range(30):
            xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
            before = reads.count
            with reads.patched():
                opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
            if not host:
                assert reads.count - before <= 1 + opt.last_step["trials"], reads.where[before:]
            clips.append(opt.last_step["clip"])
        return [p.detach().clone() for p in model.parameters()], clips

    device = run(False)
    with monkeypatch.context() as mp:
        def host_path(self, grads, params=None):
            c = AutostepOptimizer._clip_coef(self, grads, params)
            one = torch.tensor(c, dtype=torch.float64)
            return one, torch.ones((), dtype=torch.float64)
        mp.setattr(AutostepOptimizer, "_clip_coef_device", host_path)
        host = run(True)
    assert any(c < 1.0 for c in device[1])  # clipping was active
    assert device[1] == host[1]
    assert all(torch.equal(a, b) for a, b in zip(device[0], host[0]))


@pytest.mark.parametrize("name", ["SLS", "SALSA", "SALSA-amortized"])
def test_clipping_with_overflowing_squares_uses_the_exact_norm(monkeypatch, name):
    """Gradients ~1e25: their float32 squares overflow, the device coefficient is not the exact
    one; the step re-plans with the float64 norm (as the host path does) and takes the same step."""
    from autostep.optim._optimizer import AutostepOptimizer

    make = {"SLS": lambda p: autostep.SLS(p, max_grad_norm=1.0),
            "SALSA": lambda p: autostep.SALSA(p, max_grad_norm=1.0),
            "SALSA-amortized": lambda p: autostep.SALSA(p, max_grad_norm=1.0, amortize=2)}[name]

    def run():
        model, x, y = _problem()
        opt = make(model.parameters())
        clips = []
        for _ in range(14):
            opt.step(lambda: 1e25 * nn.functional.cross_entropy(model(x), y))
            clips.append(opt.last_step["clip"])
        return [p.detach().clone() for p in model.parameters()], clips, opt

    device = run()
    with monkeypatch.context() as mp:
        def host_path(self, grads, params=None):
            c = AutostepOptimizer._clip_coef(self, grads, params)
            return torch.tensor(c, dtype=torch.float64), torch.ones((), dtype=torch.float64)
        mp.setattr(AutostepOptimizer, "_clip_coef_device", host_path)
        host = run()
    assert 0.0 < device[1][0] < 1e-20 and device[1] == host[1]
    assert all(torch.equal(a, b) for a, b in zip(device[0], host[0]))
    assert device[2].nonfinite_steps == 0


def _reused_run(name, steps=30, weight_decay=0.0, max_grad_norm=None):
    """Parameters, moments and step counts after ``steps`` steps of an amortised optimizer
    (``amortize=5``, so most steps after the first searches are reused), and how many were reused."""
    model, x, y = _problem()
    cls = {"SALSA": autostep.SALSA, "ALSALS": autostep.ALSALS}[name]
    opt = cls([{"params": model[0].parameters()}, {"params": model[2].parameters(), "eps": 1e-6}],
              amortize=5, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    reused = 0
    for k in range(steps):
        xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
        reused += bool(opt.last_step.get("reused"))
    st = [opt.state[p] for p in model.parameters()]
    return ([p.detach().clone() for p in model.parameters()],
            [(s["exp_avg"].clone(), s["exp_avg_sq"].clone(), s["step"]) for s in st], reused)


@pytest.mark.parametrize("name", ["SALSA", "ALSALS"])
@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.1, "max_grad_norm": 0.05}],
                         ids=["plain", "decay-clip"])
def test_reused_steps_in_the_fused_kernel_equal_the_foreach_path(monkeypatch, name, extra):
    """A reused step runs torch's fused Adam kernel (one pass; issue 13).  Against the foreach path
    it replaces (the kernel switched off), over 30 steps with two param groups, weight decay and
    active clipping: the same step counts and reuse decisions, moments and parameters equal to
    float32 rounding (they part by rounding only)."""
    from autostep.optim import _adam

    calls = count_calls(monkeypatch, torch, "_fused_adam_")
    fused_p, fused_m, reused = _reused_run(name, **extra)
    assert reused >= 10 and calls["n"] >= reused  # one kernel call per group and reused step
    monkeypatch.setattr(_adam, "_FUSED_DEVICES", ())
    n_before = calls["n"]
    plain_p, plain_m, reused2 = _reused_run(name, **extra)
    assert calls["n"] == n_before and reused2 == reused
    for a, b in zip(fused_p, plain_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (m1, v1, k1), (m2, v2, k2) in zip(fused_m, plain_m):
        assert k1 == k2
        torch.testing.assert_close(m1, m2, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-9)


def test_fused_adam_update_is_adams_update_and_refuses_what_it_cannot_take():
    """``fused_adam_update`` against the formula (float64), and ``fusable`` against inputs the
    kernel does not take (a dtype it lacks, a gradient of another dtype, a sparse gradient)."""
    from autostep.optim._adam import fusable, fused_adam_update

    torch.manual_seed(0)
    p = torch.randn(5, 3, dtype=torch.float64)
    p0 = p.clone()
    state: dict = collections.defaultdict(dict)  # as Optimizer.state
    for k in range(1, 4):
        g = torch.randn(5, 3, dtype=torch.float64)
        m = 0.9 * state[p]["exp_avg"] + 0.1 * g if state else 0.1 * g
        v = 0.999 * state[p]["exp_avg_sq"] + 0.001 * g * g if state else 0.001 * g * g
        expect = p0 - 0.01 * (m / (1 - 0.9 ** k)) / ((v / (1 - 0.999 ** k)).sqrt() + 1e-8)
        fused_adam_update(state, [p], [g], (0.9, 0.999), 1e-8, 0.01)
        torch.testing.assert_close(p, expect, rtol=1e-12, atol=1e-14)
        assert state[p]["step"] == k
        p0 = p.clone()
    st: dict = {}
    assert fusable(st, [torch.zeros(2)], [torch.zeros(2)])
    assert not fusable(st, [torch.zeros(2, dtype=torch.int32)], [torch.zeros(2, dtype=torch.int32)])
    assert not fusable(st, [torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)])
    assert not fusable(st, [torch.zeros(2)], [torch.zeros(2).to_sparse()])


def test_fusable_refuses_layouts_the_flat_kernel_would_get_wrong():
    """The fused kernel walks parameter, gradient and moments as flat buffers (a strided view or
    mixed layouts were updated wrongly, and a view's kernel wrote into its base's gaps): such
    parameters take the foreach path.  Same layout without gaps (a transpose of both, channels_last
    throughout) is fused."""
    from autostep.optim._adam import fusable

    base = torch.zeros(8, 6)
    view = base[:, ::2]
    assert not fusable({}, [view], [torch.zeros(8, 3)])  # gaps
    t = torch.zeros(6, 8).t()
    assert not fusable({}, [t], [torch.zeros(8, 6)])  # transposed parameter, contiguous gradient
    assert fusable({}, [t], [torch.zeros(6, 8).t()])  # both transposed: same flat layout
    w = torch.zeros(4, 3, 5, 5).to(memory_format=torch.channels_last)
    g = torch.zeros_like(w)  # preserves channels_last
    assert fusable({}, [w], [g])
    # moments of another layout (a contiguous checkpoint loaded into a channels_last model)
    state = {w: {"step": 3, "exp_avg": torch.zeros(4, 3, 5, 5), "exp_avg_sq": torch.zeros(4, 3, 5, 5)}}
    assert not fusable(state, [w], [g])
    state[w] = {"step": 3, "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
    assert fusable(state, [w], [g])


def test_reused_steps_of_a_strided_view_parameter_leave_its_base_alone(monkeypatch):
    """A parameter that is a view with gaps (``base[:, ::2]``; autograd gives it a contiguous
    gradient) is updated by the foreach path: the elements of ``base`` between its columns stay as
    they were, and the run equals the run with the fused kernel switched off."""
    from autostep.optim import _adam

    def run():
        torch.manual_seed(0)
        base = torch.randn(16, 12)
        holes = base[:, 1::2].clone()
        w = nn.Parameter(base[:, ::2])
        b = nn.Parameter(torch.zeros(6))
        x, y = torch.randn(64, 16), torch.randint(0, 6, (64,))
        opt = autostep.SALSA([w, b], amortize=5)
        reused = 0
        for k in range(40):
            xb, yb = x[(k % 4) * 16:(k % 4 + 1) * 16], y[(k % 4) * 16:(k % 4 + 1) * 16]
            opt.step(lambda: nn.functional.cross_entropy(xb @ w + b, yb))
            reused += bool(opt.last_step.get("reused"))
        assert reused >= 10
        assert torch.equal(base[:, 1::2], holes)
        return w.detach().clone(), b.detach().clone()

    fused = run()
    monkeypatch.setattr(_adam, "_FUSED_DEVICES", ())
    for a, c in zip(fused, run()):
        assert torch.equal(a, c)


def test_fused_reused_steps_in_bfloat16_round_once():
    """bfloat16 parameters: the fused kernel keeps float32 intermediates and rounds once, so a
    reused step differs from the foreach path by bfloat16 rounding only: ``m`` bitwise, ``v`` and
    the parameters within a few units in the last place after 3 steps."""
    from autostep.optim._adam import AdamMoments, fused_adam_update

    torch.manual_seed(0)
    pf = torch.randn(1000).bfloat16()
    pe = pf.clone()
    sf, se = collections.defaultdict(dict), collections.defaultdict(dict)
    for _ in range(3):
        g = torch.randn(1000).bfloat16()
        fused_adam_update(sf, [pf], [g], (0.9, 0.999), 1e-8, 0.01)
        mo = AdamMoments(se, [pe], [g], (0.9, 0.999), 1e-8)
        mo.commit()
        pe.addcdiv_(mo.ms[0], mo.denom()[0], value=-0.01 / mo.bc1[0])
    assert torch.equal(sf[pf]["exp_avg"], se[pe]["exp_avg"])
    ulp = 2.0 ** -7  # bfloat16: 8 significant bits
    for a, b in ((sf[pf]["exp_avg_sq"], se[pe]["exp_avg_sq"]), (pf, pe)):
        a, b = a.float(), b.float()
        assert ((a - b).abs() <= 4 * ulp * b.abs()).all()


def test_cpu_scalars_multiply_and_divide_bitwise_like_python_floats():
    # foreach mul/div by a cached 0-d tensor instead of a Python float (which CPU torch wraps into
    # a new tensor for every tensor of the list): bitwise the same products for float32/float64
    from autostep.optim._adam import cpu_scalar, scalar_dtype
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        xs = [torch.randn(257, dtype=dtype) * 10.0 ** e for e in (-30, -3, 0, 5, 30)]
        assert scalar_dtype(xs) is dtype
        for value in (0.999, math.sqrt(1 - 0.999 ** 7), 1e-8, 1 / 3, 0.9 ** 0.5, 7.0):
            t = cpu_scalar(value, dtype)
            assert t.dim() == 0 and t.dtype is dtype and cpu_scalar(value, dtype) is t  # cached
            for a, b in zip(torch._foreach_mul(xs, value), torch._foreach_mul(xs, t)):
                assert torch.equal(a, b)
            for a, b in zip(torch._foreach_div(xs, value), torch._foreach_div(xs, t)):
                assert torch.equal(a, b)
    # half types round a 0-d tensor scalar differently; mixed dtypes, non-CPU or no tensors: floats
    assert scalar_dtype([torch.ones(2, dtype=torch.float16)]) is None
    assert scalar_dtype([torch.ones(2, dtype=torch.bfloat16)]) is None
    assert scalar_dtype([torch.ones(2), torch.ones(2, dtype=torch.float64)]) is None
    assert scalar_dtype([torch.ones(2, device="meta")]) is None
    assert scalar_dtype([]) is None and cpu_scalar(0.5, None) == 0.5


def test_cpu_scalars_stay_on_the_cpu_under_another_default_device():
    # the cached 0-d tensors were made on the default device: a CPU model stepped under
    # torch.set_default_device("meta") (or "cuda") raised, and kept raising from the cache
    from autostep.optim import _adam
    _adam._SCALARS.clear()
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    opt = autostep.SALSA([w])
    torch.set_default_device("meta")
    try:
        for _ in range(3):
            opt.step(lambda: ((w - 1.0) ** 2).sum())
    finally:
        torch.set_default_device(None)  # (None: no default-device mode, as before)
    assert all(t.device.type == "cpu" for t in _adam._SCALARS.values()) and _adam._SCALARS
    opt.step(lambda: ((w - 1.0) ** 2).sum())
    assert opt.steps == 4 and torch.isfinite(w).all()


def test_flat_buffer_views_are_contiguous_slices_of_one_buffer():
    from autostep._line import flat_buffer
    ts = [torch.zeros(3, 4), torch.zeros(()), torch.zeros(0, 5), torch.zeros(2, 1, 3),
          torch.zeros(4, 3).t()]
    flat, views = flat_buffer(ts)
    flat.copy_(torch.arange(flat.numel(), dtype=flat.dtype))
    off = 0
    for t, v in zip(ts, views):
        n = t.numel()
        ref = flat[off:off + n].view(t.shape)
        assert v.shape == t.shape and v.stride() == ref.stride() and v.is_contiguous()
        assert v.data_ptr() == ref.data_ptr() and torch.equal(v, ref)
        off += n
    assert off == flat.numel()
