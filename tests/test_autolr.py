"""Tests of autostep.autolr: the pure math on floats, then the wrapper on tiny real problems."""

import copy
import io
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import autostep.autolr.schedule as S
from autostep.autolr import (AutoLR, SaturationMonitor, clip_eps, eps_bound,
                             next_lr, probe_offsets, quadratic_argmin, should_rollback)
from autostep.distributed import Reducer
from autostep.bench.tasks import digits_mlp


# ------------------------------------------------------------------------------------ pure math
# (the quadratic fit itself: tests/test_quadratic.py)
def test_argmin_without_minimum_points_downhill():
    assert quadratic_argmin(-1.0, 0.0) == math.inf
    assert quadratic_argmin(1.0, -2.0) == -math.inf
    assert quadratic_argmin(0.0, 0.0) == 0.0
    assert quadratic_argmin(1.0, 2.0) == -0.25


def test_eps_threshold_clips_as_specified():
    r, L = 1e-3, 0.8
    b = (r * L) ** (1 / 3)
    assert eps_bound(L, r) == pytest.approx(b, rel=1e-15)
    # inside: |eps|^3 < r L -> unchanged
    for e in (0.0, 0.5 * b, -0.99 * b):
        assert clip_eps(e, L, r) == (e, False)
    # outside (or on the boundary): clipped to sign * (r L)^(1/3)
    for e in (1.01 * b, 5.0, math.inf):
        eps, clipped = clip_eps(e, L, r)
        assert clipped and eps == pytest.approx(b, rel=1e-15)
    for e in (-1.01 * b, -math.inf):
        eps, clipped = clip_eps(e, L, r)
        assert clipped and eps == pytest.approx(-b, rel=1e-15)
    assert clip_eps(math.nan, L, r) == (0.0, True)
    assert eps_bound(0.0, r) == 0.0 and eps_bound(-1.0, r) == 0.0 and eps_bound(math.nan, r) == 0.0


def test_probe_offsets_symmetric_and_bounded():
    # default: the samples span the epsilon bound (the region the decision may move to)
    assert probe_offsets(0.1, 0.02, 5) == pytest.approx([-0.02, -0.01, 0.0, 0.01, 0.02])
    assert probe_offsets(1e-4, 0.02, 3) == pytest.approx([-0.02, 0.0, 0.02])
    # probe_scale caps the half-width at probe_scale * lr; the bound still wins when smaller
    assert probe_offsets(0.1, 1.0, 5, 0.5) == pytest.approx([-0.05, -0.025, 0.0, 0.025, 0.05])
    assert probe_offsets(0.1, 0.01, 3, 0.5) == pytest.approx([-0.01, 0.0, 0.01])


def test_next_lr_explore_never_lowers_and_exploit_floor():
    for e in np.linspace(-1, 1, 41):
        assert next_lr(0.1, float(e), "explore", 0.1) >= 0.1
    assert next_lr(0.1, 0.05, "explore", 0.1) == pytest.approx(0.15)
    assert next_lr(0.1, -0.05, "exploit", 0.1) == pytest.approx(0.05)
    assert next_lr(0.1, -0.5, "exploit", 0.1) == pytest.approx(0.01)


def test_rollback_rule():
    assert should_rollback("exploit", 1.0, 0.5) and not should_rollback("exploit", 1.0, 1.5)
    assert should_rollback("explore", 1.0, -1e-9) and not should_rollback("explore", 1.0, 0.5)
    assert should_rollback("explore", 1.0, math.nan) and should_rollback("exploit", 1.0, math.inf)


def test_saturation_switches_relative_to_absolute_once():
    m = SaturationMonitor(100.0)
    assert not m.crossed(1.0, 0.5) and m.mode == "relative"
    assert not m.crossed(None, 1e-9) and not m.crossed(-1.0, -5.0)   # no usable start rate
    assert m.crossed(1.0, 0.009) and m.switched_now
    assert m.mode == "absolute" and m.absolute == 0.009
    # from now on absolute: the start rate no longer matters, and it never switches again
    assert not m.crossed(1e-6, 0.0095) and not m.switched_now
    assert m.crossed(50.0, 0.009) and not m.switched_now
    assert m.crossed(1.0, 0.001) and m.absolute == 0.009 and not m.switched_now
    m2 = SaturationMonitor(10.0)
    assert m2.crossed(1.0, -0.3) and m2.absolute == 0.0   # loss rose: saturated, floor at 0
    m3 = SaturationMonitor(10.0)
    m3.load_state_dict(m.state_dict())
    assert (m3.mode, m3.absolute) == ("absolute", 0.009)


# ------------------------------------------------------------------------------------ helpers
OPTS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05),
}


def make(opt="sgd", seed=0, **kw):
    p = digits_mlp(seed, hidden=(16,))
    o = OPTS[opt](p.model.parameters())
    kw.setdefault("recompute_every", 10)
    kw.setdefault("superbatch", 2)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(20, seed=7), **kw)
    return p, o, a


def train(p, a, n, seed=1, start=0, hook=None):
    for i, b in enumerate(p.batches(start + n, seed=seed)):
        if i < start:
            continue
        loss = p.loss_fn(p.model, b)
        loss.backward()
        if hook is not None:
            hook(i)
        a.step()
        a.zero_grad()


def params_of(model):
    return [t.detach().clone() for t in model.parameters()]


def same(xs, ys):
    return len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys))


def same_state(s1, s2):
    """Bitwise equality of two optimizer state dicts."""
    if s1["param_groups"] != s2["param_groups"] or s1["state"].keys() != s2["state"].keys():
        return False
    for k in s1["state"]:
        a, b = s1["state"][k], s2["state"][k]
        if a.keys() != b.keys():
            return False
        for n in a:
            if isinstance(a[n], torch.Tensor):
                if not torch.equal(a[n], b[n]):
                    return False
            elif a[n] != b[n]:
                return False
    return True


# ------------------------------------------------------------------------------------ the wrapper
def test_probe_fit_recovers_exact_line_minimum_on_least_squares():
    """Least squares: L(w - s g) is exactly quadratic in s, so eps_min is the exact line minimum."""
    torch.manual_seed(0)
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randn(64, 1, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # noqa: E731
    eta = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    a = AutoLR(opt, model, loss_fn, [(x, y)], recompute_every=5, superbatch=1, explore_steps=100,
               eps_threshold=1e3, rollback=False)
    seen = {}
    for t in range(6):
        loss = loss_fn(model, (x, y))
        loss.backward()
        if t == 5:
            g = model.weight.grad.detach().clone().reshape(-1)
            hess = 2.0 / 64 * x.T @ x
            seen["eps"] = float(g @ g / (g @ hess @ g)) - a.lr
        a.step()
        a.zero_grad()
    h = a.history[0]
    assert h["event"] == "recompute" and not h["clipped"]
    assert h["eps_min"] == pytest.approx(seen["eps"], abs=1e-6)
    assert seen["eps"] > 0.05  # the test is not trivially satisfied by eps ~ 0
    assert a.lr == pytest.approx(eta + seen["eps"], abs=1e-6)


@pytest.mark.parametrize("name", list(OPTS))
def test_direction_is_the_real_next_update_and_state_is_untouched(name):
    p, o, a = make(name)
    train(p, a, 7)  # populate momentum / Adam moments
    b = next(iter(p.batches(1, seed=3)))
    p.loss_fn(p.model, b).backward()
    before_p, before_s = params_of(p.model), copy.deepcopy(o.state_dict())
    params = a._params()
    d = a._direction(params)
    assert same(params_of(p.model), before_p) and same_state(o.state_dict(), before_s)
    o.step()   # the real update at the current rate
    expect = [w - a.lr * di for w, di in zip(before_p, d)]
    for got, want in zip(params_of(p.model), expect):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


def test_direction_respects_group_ratios():
    p = digits_mlp(0, hidden=(16,))
    layers = [m for m in p.model if isinstance(m, nn.Linear)]
    o = torch.optim.SGD([{"params": layers[0].parameters(), "lr": 0.2},
                         {"params": layers[1].parameters(), "lr": 0.05}], lr=0.2)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(4), recompute_every=10, superbatch=2)
    assert a._rates.ratios == [1.0, 0.25]
    b = next(iter(p.batches(1)))
    p.loss_fn(p.model, b).backward()
    params = a._params()
    d = a._direction(params)
    grads = [q.grad for q in params]
    assert torch.allclose(d[0], grads[0], atol=1e-6) and torch.allclose(d[-1], 0.25 * grads[-1],
                                                                         atol=1e-6)
    a._set_rate(0.4)
    assert o.param_groups[1]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_wrapping_trains_and_logs(name):
    kw = {"eps_threshold": 1e-9} if name.startswith("adam") else {}
    p, o, a = make(name, total_steps=200, explore_steps=0.25, saturation_threshold=3.0, **kw)
    before = p.evaluate("train").loss
    train(p, a, 200)
    after = p.evaluate("train").loss
    assert after < 0.7 * before
    assert a.recomputes >= 4 and a.steps == 200 and math.isfinite(a.lr) and a.lr > 0
    keys = {"step", "phase", "old_lr", "new_lr", "eps_min", "clipped", "rollback"}
    assert all(keys <= h.keys() for h in a.history)
    assert {h["phase"] for h in a.history} == {"explore", "exploit"}
    assert any(h["new_lr"] != h["old_lr"] for h in a.history if h["event"] == "recompute")


def test_explore_never_lowers_the_rate():
    p, o, a = make("sgd", explore_steps=400, recompute_every=10, rollback=False)
    lrs = []
    train(p, a, 400, hook=lambda i: lrs.append(a.lr))
    assert all(b >= c for c, b in zip(lrs, lrs[1:]))
    rec = [h for h in a.history if h["event"] == "recompute"]
    assert len(rec) >= 30 and all(h["phase"] == "explore" for h in rec)
    assert any(h["eps_min"] < 0 for h in rec)     # the fit asked for a decrease at least once
    assert any(h["new_lr"] > h["old_lr"] for h in rec)


def test_exploit_switches_saturation_mode_once():
    p, o, a = make("momentum", explore_steps=0, saturation_threshold=2.0)
    train(p, a, 300)
    switches = [h for h in a.history if h["event"] == "switch"]
    assert len(switches) == 1 and a.saturation_mode == "absolute"
    assert a.absolute_threshold == max(switches[0]["rate"], 0.0)
    # the switch is followed by a recompute at the same step; recomputes only happen when saturated
    i = a.history.index(switches[0])
    assert a.history[i + 1]["event"] == "recompute" and a.history[i + 1]["step"] == switches[0]["step"]
    for h in a.history[i + 2:]:
        if h["event"] == "recompute" and h["rate_start"] is not None:
            assert h["rate"] <= a.absolute_threshold


def test_no_recompute_before_saturation_in_exploit():
    p, o, a = make("sgd", explore_steps=0, saturation_threshold=1e6)
    train(p, a, 120)
    assert a.recomputes == 0 and a.lr == 0.1 and a.saturation_mode == "relative"


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_rollback_restores_parameters_and_optimizer_state_bitwise(where, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "should_rollback", lambda phase, before, after: True)
    kw = {"snapshot": "disk", "snapshot_dir": str(tmp_path)} if where == "disk" else {}
    p, o, a = make("momentum", explore_steps=100, **kw)
    saved = {}

    def hook(i):
        saved[i] = (params_of(p.model), copy.deepcopy(o.state_dict()))
        if where == "disk" and a._schedule.pending is not None:
            assert os.listdir(tmp_path)   # the snapshot lives on disk while pending

    train(p, a, 21, hook=hook)
    rb = [h for h in a.history if h["event"] == "rollback"]
    assert len(rb) == 1 and rb[0]["step"] == 20 and rb[0]["change_step"] == 10
    ch = [h for h in a.history if h["event"] == "recompute"][0]
    assert ch["new_lr"] != ch["old_lr"] and "snapshot_bytes" in ch
    p10, s10 = saved[10]
    # after the rollback at step 20 the update of step 20 is skipped: state == state before step 10
    assert same(params_of(p.model), p10) and same_state(o.state_dict(), s10)
    assert a.lr == ch["old_lr"] and a.rollbacks == 1
    if where == "disk":
        assert os.listdir(tmp_path) == []
    # after a rollback the old rate runs one window without a recompute
    train(p, a, 10, start=21)
    assert [h["event"] for h in a.history[-1:]] == ["rollback"]


@pytest.mark.parametrize("name", ["momentum", "adam"])
@pytest.mark.parametrize("save_at", [25, 55])
def test_state_dict_round_trip_continues_identically(name, save_at):
    kw = dict(explore_steps=30, saturation_threshold=3.0)
    if name == "adam":
        kw["eps_threshold"] = 1e-6   # Adam's rates are ~1e-3: the paper scales r down for them
    p1, o1, a1 = make(name, **kw)
    train(p1, a1, 121)
    ref_params, ref_hist = params_of(p1.model), a1.history

    p2, o2, a2 = make(name, **kw)
    train(p2, a2, save_at)
    # a change is pending (its snapshot travels in the dict); at 55 the saturation mode is absolute
    assert a2._schedule.pending is not None
    assert a2.saturation_mode == ("relative" if save_at < 50 else "absolute")
    buf = io.BytesIO()
    torch.save({"model": p2.model.state_dict(), "autolr": a2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    assert set(ck["autolr"]) == {"state", "param_groups"}

    p3, o3, a3 = make(name, seed=5, **kw)   # different init: everything must come from the dict
    p3.model.load_state_dict(ck["model"])
    a3.load_state_dict(ck["autolr"])
    assert a3.steps == save_at and a3.lr == a2.lr
    train(p3, a3, 121 - save_at, start=save_at)
    assert same(params_of(p3.model), ref_params)
    assert repr(a3.history) == repr(ref_hist)   # repr: NaN entries compare equal
    assert any(h["event"] == "recompute" for h in ref_hist if h["step"] > save_at)


def test_delegation():
    p, o, a = make("momentum")
    assert isinstance(a, torch.optim.Optimizer) and a.state is o.state
    assert [g["params"] for g in a.param_groups] == [g["params"] for g in o.param_groups]
    train(p, a, 3)
    assert all(q.grad is None for q in p.model.parameters())
    b = next(iter(p.batches(1)))
    p.loss_fn(p.model, b).backward()
    a.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(q.grad) == 0 for q in p.model.parameters())
    extra = nn.Parameter(torch.zeros(3))
    a._set_rate(0.2)
    a.add_param_group({"params": [extra], "lr": 0.05})
    assert a._rates.ratios[-1] == pytest.approx(0.25)
    a._set_rate(0.4)
    assert o.param_groups[-1]["lr"] == pytest.approx(0.1)
    sd = a.state_dict()
    assert set(sd) == {"state", "param_groups"} and "autolr" in sd["param_groups"][0]
    assert [g["wrapped"] for g in sd["param_groups"]] == [
        {k: v for k, v in g.items() if k != "params"} for g in o.state_dict()["param_groups"]]
    o2 = torch.optim.SGD(p.model.parameters(), lr=0.1, momentum=0.9)
    o2.add_param_group({"params": [extra], "lr": 0.05})
    p.model.zero_grad()
    a.load_state_dict(o2.state_dict())   # a plain optimizer dict is accepted
    assert o.param_groups[0]["lr"] == 0.1
    assert "AutoLR(" in repr(a)


def test_probes_replay_randomness_and_restore_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(6)]
    loss_fn = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])   # noqa: E731
    o = torch.optim.SGD(model.parameters(), lr=0.1)
    a = AutoLR(o, model, loss_fn, data, recompute_every=3, superbatch=3)
    for t in range(7):
        loss_fn(model, data[t % 6]).backward()
        rng = torch.get_rng_state()
        bufs = [b.clone() for b in model.buffers()]
        a.step()
        a.zero_grad()
        # AutoLR's forwards (checks and probes at t = 3, 6) neither shift the generator nor the buffers
        assert torch.equal(torch.get_rng_state(), rng)
        assert same([b.clone() for b in model.buffers()], bufs)
    assert a.recomputes == 2
    # same dropout masks for every probe: with a zero direction every probe point is theta itself,
    # so the five superbatch losses are identical only if the generator is replayed before each pass
    for t in range(3):
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
        a.step()
    h = a.history[-1]
    assert h["step"] == 9 and h["event"] == "recompute"
    assert len(h["losses"]) == 5 and len(set(h["losses"])) == 1
    assert h["new_lr"] == h["old_lr"]


def test_probe_losses_go_through_the_reducer():
    class Spy(Reducer):
        def __init__(self):
            super().__init__()
            self.calls = []

        def mean(self, values, device="cpu"):
            self.calls.append(len(values))
            return [v + 1.0 for v in values]   # a fake "other rank" shifts every loss by 1

    spy = Spy()
    p = digits_mlp(0, hidden=(16,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(10), recompute_every=5, superbatch=2,
               reducer=spy)
    train(p, a, 6)
    assert spy.calls == [1, 1, 5]   # rate superbatch at the start and at the check, 5 probes at once
    h = a.history[0]
    assert all(v > 1.0 for v in h["losses"]) and h["loss"] > 1.0


def test_closure_and_iterable_probe_data():
    p = digits_mlp(0, hidden=(16,))
    o = torch.optim.Adam(p.model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*p.train), batch_size=64)
    a = AutoLR(o, p.model, p.loss_fn, loader, recompute_every=5, superbatch=30,
               eps_threshold=1e-9)   # 30 > 20 batches per epoch: the loader restarts
    for b in p.batches(11):
        def closure():
            a.zero_grad()
            loss = p.loss_fn(p.model, b)
            loss.backward()
            return loss
        out = a.step(closure)
        assert isinstance(out, torch.Tensor)
    assert a.recomputes == 2 and len(a._schedule.sb) == 30 and len(a._schedule.rate_sb) == 30


@pytest.mark.parametrize("kw,exc,match", [
    (dict(superbatch=0), ValueError, "superbatch must be an integer >= 1, got 0"),
    (dict(superbatch=2.5), ValueError, "superbatch .* got 2.5"),
    (dict(num_samples=2), ValueError, "num_samples must be an integer >= 3, got 2"),
    (dict(recompute_every=-1), ValueError, "recompute_every .* got -1"),
    (dict(explore_steps=-5), ValueError, "explore_steps must be >= 0, got -5"),
    (dict(explore_steps=0.2), ValueError, "pass total_steps"),
    (dict(explore_steps=1.5, total_steps=10), ValueError, r"\[0, 1\], got 1.5"),
    (dict(explore_steps="10"), TypeError, "explore_steps must be an int"),
    (dict(total_steps=0), ValueError, "total_steps .* got 0"),
    (dict(eps_threshold=0), ValueError, "eps_threshold must be > 0, got 0"),
    (dict(eps_threshold=math.nan), ValueError, "eps_threshold must be finite"),
    (dict(saturation_threshold=0.5), ValueError, "saturation_threshold must be >= 1"),
    (dict(probe_scale=-1.0), ValueError, r"probe_scale must be > 0, got -1.0"),
    (dict(min_lr_ratio=1.0), ValueError, r"min_lr_ratio must be in \(0, 1\), got 1.0"),
    (dict(rollback="yes"), TypeError, "rollback must be True or False"),
    (dict(snapshot="gpu"), ValueError, r"snapshot must be one of \('memory', 'disk'\), got 'gpu'"),
    (dict(snapshot_dir="/nonexistent/x"), ValueError, "not an existing folder"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
])
def test_bad_arguments_raise(kw, exc, match):
    p = digits_mlp(0, hidden=(8,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    with pytest.raises(exc, match=match):
        AutoLR(o, p.model, p.loss_fn, p.batch_list(2), **kw)


def test_bad_objects_raise():
    p = digits_mlp(0, hidden=(8,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got list"):
        AutoLR([o], p.model, p.loss_fn, p.batch_list(2))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        AutoLR(o, p.model.state_dict(), p.loss_fn, p.batch_list(2))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        AutoLR(o, p.model, 3, p.batch_list(2))
    with pytest.raises(TypeError, match="wrap it in a DataLoader"):
        AutoLR(o, p.model, p.loss_fn, torch.utils.data.TensorDataset(*p.train))
    with pytest.raises(TypeError, match="probe_data must be"):
        AutoLR(o, p.model, p.loss_fn, 5)
    with pytest.raises(ValueError, match="probe_data is empty"):
        AutoLR(o, p.model, p.loss_fn, [])
    o0 = torch.optim.SGD(p.model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="got lr=0.0 in param group 0"):
        AutoLR(o0, p.model, p.loss_fn, p.batch_list(2))
    a = AutoLR(o, p.model, lambda m, b: m(b[0]), p.batch_list(2), superbatch=1)
    p.loss_fn(p.model, p.batch_list(1)[0]).backward()
    with pytest.raises(TypeError, match="loss_fn.*shape.*must return a scalar loss"):
        a.step()


def test_defaults_follow_the_paper():
    p = digits_mlp(0, hidden=(8,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(2))
    assert (a.superbatch, a.num_samples, a.recompute_every, a.explore_steps) == (100, 5, 1000, 10000)
    assert (a.eps_threshold, a.saturation_threshold, a.rollback) == (1e-3, 100.0, True)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(2), total_steps=5000)   # a short run: 25 windows
    assert (a.explore_steps, a.superbatch, a.recompute_every) == (1000, 20, 200)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(2), total_steps=100)
    assert (a.explore_steps, a.superbatch, a.recompute_every) == (20, 1, 10)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(2), total_steps=200_000)   # the paper's scale
    assert (a.explore_steps, a.superbatch, a.recompute_every) == (40_000, 100, 1000)
    a = AutoLR(o, p.model, p.loss_fn, p.batch_list(2), total_steps=5000, explore_steps=0.25)
    assert a.explore_steps == 1250


def _dist_worker(rank, world, path, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    g = torch.Generator().manual_seed(100 + rank)        # each rank has its own shard
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(4)]
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # noqa: E731
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    a = AutoLR(opt, model, loss_fn, data, recompute_every=3, superbatch=2, explore_steps=12)
    for t in range(12):
        loss_fn(model, data[t % 4]).backward()
        for q in model.parameters():                       # what DDP would do: average the grads
            dist.all_reduce(q.grad)
            q.grad /= world
        a.step()
        a.zero_grad()
    torch.save([(h["event"], h["old_lr"], h["new_lr"], h.get("losses")) for h in a.history],
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_take_the_same_decisions(tmp_path):
    import two_ranks
    two_ranks.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "h")))
    h0, h1 = (torch.load(f"{tmp_path / 'h'}.{r}") for r in (0, 1))
    assert len(h0) >= 2 and h0 == h1


# ------------------------------------------------------------------------------------ faults (issue 11 item 7)
class Flaky:
    """A loss_fn that raises on chosen calls made under no_grad (AutoLR's own evaluations)."""

    def __init__(self, loss_fn, fail_calls):
        self.loss_fn, self.fail, self.calls = loss_fn, set(fail_calls), 0

    def __call__(self, model, batch):
        if not torch.is_grad_enabled():
            self.calls += 1
            if self.calls in self.fail:
                raise RuntimeError("injected fault")
        return self.loss_fn(model, batch)


def run_with_retries(fail_calls, steps=45, name="momentum", **kw):
    """Train ``steps`` steps; a step that raises is retried with the same gradient."""
    p = digits_mlp(0, hidden=(16,))
    o = OPTS[name](p.model.parameters())
    loss_fn = Flaky(p.loss_fn, fail_calls)
    a = AutoLR(o, p.model, loss_fn, p.batch_list(20, seed=7), recompute_every=10, superbatch=2,
               explore_steps=30, saturation_threshold=2.0, **kw)
    failures = 0
    for b in p.batches(steps, seed=1):
        p.loss_fn(p.model, b).backward()
        while True:
            before = (params_of(p.model), copy.deepcopy(o.state_dict()), a.steps, len(a.history))
            try:
                a.step()
                break
            except RuntimeError as e:
                assert "injected fault" in str(e)
                failures += 1
                after = (params_of(p.model), o.state_dict(), a.steps, len(a.history))
                assert same(after[0], before[0]) and same_state(after[1], before[1])
                assert after[2:] == before[2:]
        a.zero_grad()
    return p, a, failures


@pytest.mark.parametrize("fail_calls", [[1], [1, 2], [4], [5, 9]],
                         ids=["first-eval", "first-eval-twice", "check", "probes"])
def test_exception_in_a_step_leaves_autolr_as_it_was(fail_calls):
    """Before: _rate_sb was set before the first evaluation failed, and from step 5 on every step
    raised 'NoneType - float'.  Now a failed step changes nothing and the run, retried, equals the
    uninterrupted one bit for bit."""
    p0, a0, n0 = run_with_retries([])
    p1, a1, n1 = run_with_retries(fail_calls)
    assert n0 == 0 and n1 == len(fail_calls)
    assert same(params_of(p1.model), params_of(p0.model))
    assert repr(a1.history) == repr(a0.history) and a1.recomputes == a0.recomputes >= 2
    assert a1.probe_forwards == a0.probe_forwards


def test_failed_step_with_iterable_probe_data_serves_the_same_batches_again():
    p = digits_mlp(0, hidden=(16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*p.train), batch_size=64)
    runs = []
    for fail in ([], [1]):
        model = digits_mlp(0, hidden=(16,)).model
        a = AutoLR(torch.optim.SGD(model.parameters(), lr=0.1), model, Flaky(p.loss_fn, fail),
                   loader, recompute_every=5, superbatch=3)
        for b in p.batches(12, seed=1):
            p.loss_fn(model, b).backward()
            try:
                a.step()
            except RuntimeError:
                a.step()
            a.zero_grad()
        runs.append((params_of(model), repr(a.history)))
    assert same(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_foreign_optimizer_is_refused():
    p, q = digits_mlp(0, hidden=(8,)), digits_mlp(1, hidden=(8,))
    foreign = torch.optim.SGD(q.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of the optimizer's 4 parameters is a parameter of "
                                         "the model"):
        AutoLR(foreign, p.model, p.loss_fn, p.batch_list(2))
    extra = nn.Parameter(torch.zeros(3))
    mixed = torch.optim.SGD(list(p.model.parameters()) + [extra], lr=0.1)
    with pytest.warns(UserWarning, match=r"1 of the optimizer's 5 parameters \(shapes \[\(3,\)\]"):
        AutoLR(mixed, p.model, p.loss_fn, p.batch_list(2))


def test_nan_batch_in_the_superbatch_is_skipped_with_a_warning():
    """Before: one NaN batch made every superbatch loss NaN and froze the rate for the whole run."""
    p = digits_mlp(0, hidden=(16,))
    good = p.batch_list(3, seed=7)
    bad = (torch.full_like(good[0][0], math.nan), good[0][1])
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    a = AutoLR(o, p.model, p.loss_fn, good + [bad], recompute_every=10, superbatch=4,
               explore_steps=100, rollback=False)   # superbatch 4 of 4: the NaN batch is in each
    with pytest.warns(RuntimeWarning, match=r"1 of 4 probe mini-batches gave a non-finite loss"):
        train(p, a, 41)
    rec = [h for h in a.history if h["event"] == "recompute"]
    assert len(rec) == 4 and all(math.isfinite(h["loss"]) for h in rec)
    assert all(all(math.isfinite(v) for v in h["losses"]) for h in rec)
    assert a.lr > 0.1   # the rate moved: it is not frozen


def test_all_nan_probe_data_still_leaves_the_rate_unchanged():
    p = digits_mlp(0, hidden=(8,))
    b = p.batch_list(1)[0]
    bad = (torch.full_like(b[0], math.nan), b[1])
    a = AutoLR(torch.optim.SGD(p.model.parameters(), lr=0.1), p.model, p.loss_fn, [bad, bad],
               recompute_every=5, superbatch=2, rollback=False)
    train(p, a, 11)
    assert a.lr == 0.1 and all("not positive and finite" in h["note"] for h in a.history)


def test_empty_or_one_shot_probe_data_refused_at_construction():
    p = digits_mlp(0, hidden=(8,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probe_data \(DataLoader\) has no mini-batches"):
        AutoLR(o, p.model, p.loss_fn, torch.utils.data.DataLoader(empty, batch_size=8))
    small = torch.utils.data.TensorDataset(*[t[:5] for t in p.train])
    with pytest.raises(ValueError, match="drop_last=True"):
        AutoLR(o, p.model, p.loss_fn,
               torch.utils.data.DataLoader(small, batch_size=8, drop_last=True))
    with pytest.raises(TypeError, match=r"one-shot iterator \(generator\)"):
        AutoLR(o, p.model, p.loss_fn, (b for b in p.batch_list(3)))
    with pytest.raises(TypeError, match="one-shot iterator"):
        AutoLR(o, p.model, p.loss_fn, iter(p.batch_list(3)))


def test_empty_iterable_without_length_fails_clearly_and_changes_nothing():
    class Nothing:
        def __iter__(self):
            return iter(())

    p = digits_mlp(0, hidden=(8,))
    o = torch.optim.SGD(p.model.parameters(), lr=0.1)
    a = AutoLR(o, p.model, p.loss_fn, Nothing(), superbatch=2)
    p.loss_fn(p.model, p.batch_list(1)[0]).backward()
    before = params_of(p.model)
    with pytest.raises(ValueError, match=r"probe_data \(Nothing\) yielded no mini-batch"):
        a.step()
    assert a.steps == 0 and a._schedule.rate_sb is None and same(params_of(p.model), before)


# ------------------------------------------------------------------------------------ torch.optim surface
def test_is_an_optimizer_that_deepcopies_and_pickles():
    p, o, a = make("momentum", explore_steps=30)
    train(p, a, 12)
    a2 = copy.deepcopy(a)
    assert isinstance(a2, torch.optim.Optimizer) and a2._schedule._rate.__self__ is a2
    assert a2.optimizer is not a.optimizer and a2.steps == 12
    buf = io.BytesIO()
    torch.save(a, buf)   # the whole object pickles (what multiprocessing does)
    hooks = []
    a.register_step_pre_hook(lambda opt, args, kw: hooks.append(opt.steps))
    train(p, a, 2, start=12)
    assert hooks == [12, 13]


def lr_in_use(o):
    """Record the wrapped optimizer's group-0 lr at every real update."""
    seen = []
    o.register_step_pre_hook(lambda opt, args, kw: seen.append(opt.param_groups[0]["lr"]))
    return seen


def test_scheduler_on_autolr_multiplies_its_rate():
    p, o, a = make("momentum", explore_steps=40)
    seen = lr_in_use(o)
    f = lambda t: 1.0 / (1 + 0.1 * t)   # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(a, f)
    rates = []
    for t, b in enumerate(p.batches(50, seed=1)):
        p.loss_fn(p.model, b).backward()
        a.step()
        rates.append((a.lr, f(t)))
        a.zero_grad()
        sched.step()
    # AutoLR's direction probes run a step at unit rate too: keep the real updates only
    real = [v for v in seen if v != 1.0]
    assert len(real) == 50 and a.recomputes >= 3 and len({r for r, _ in rates}) >= 3
    for v, (eta, m) in zip(real, rates):
        assert v == pytest.approx(eta * m, rel=1e-12)
    assert sched.get_last_lr() == [0.1 * f(50)]   # the scheduler sees its own values


def test_constant_scheduler_on_autolr_changes_nothing():
    """HF's 'constant' schedule is LambdaLR(opt, lambda _: 1): bit-identical to no scheduler."""
    runs = []
    for with_sched in (False, True):
        p, o, a = make("momentum", explore_steps=30, saturation_threshold=2.0)
        sched = torch.optim.lr_scheduler.LambdaLR(a, lambda t: 1.0) if with_sched else None
        for b in p.batches(60, seed=1):
            p.loss_fn(p.model, b).backward()
            a.step()
            a.zero_grad()
            if sched is not None:
                sched.step()
        runs.append((params_of(p.model), repr(a.history)))
    assert same(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_scheduler_on_the_wrapped_optimizer_is_refused_before_it_overrides():
    """Before: LambdaLR(inner, lambda t: 1.0) silently reset every AutoLR decision."""
    from autostep.autolr.rates import ForeignRateError
    p, o, a = make("momentum", explore_steps=40)
    sched = torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0)
    with pytest.raises(ForeignRateError, match=r"param group 0 is 0.1, but AutoLR set it to .*"
                                               r"LambdaLR\(autolr, f\)"):
        for b in p.batches(30, seed=1):
            p.loss_fn(p.model, b).backward()
            before = (params_of(p.model), a.steps)
            a.step()
            a.zero_grad()
            sched.step()
    assert a.steps == 11 and a.lr != 0.1            # AutoLR changed the rate at step 10
    assert same(params_of(p.model), before[0]) and a.steps == before[1]   # the refused step did nothing


def test_state_dict_has_only_torch_keys_and_resumes_a_scheduler():
    kw = dict(explore_steps=30, saturation_threshold=3.0)
    f = lambda t: 0.99 ** t   # noqa: E731

    def run(p, a, sched, start, stop):
        for t, b in enumerate(p.batches(stop, seed=1)):
            if t < start:
                continue
            p.loss_fn(p.model, b).backward()
            a.step()
            a.zero_grad()
            sched.step()

    p1, o1, a1 = make("momentum", **kw)
    s1 = torch.optim.lr_scheduler.LambdaLR(a1, f)
    run(p1, a1, s1, 0, 60)
    p2, o2, a2 = make("momentum", **kw)
    s2 = torch.optim.lr_scheduler.LambdaLR(a2, f)
    run(p2, a2, s2, 0, 25)
    sd = a2.state_dict()
    assert set(sd) == {"state", "param_groups"} and "initial_lr" in sd["param_groups"][0]
    ck = copy.deepcopy({"model": p2.model.state_dict(), "opt": sd, "sched": s2.state_dict()})
    p3, o3, a3 = make("momentum", seed=5, **kw)
    p3.model.load_state_dict(ck["model"])
    a3.load_state_dict(ck["opt"])
    s3 = torch.optim.lr_scheduler.LambdaLR(a3, f, last_epoch=24)   # needs initial_lr from the dict
    s3.load_state_dict(ck["sched"])
    run(p3, a3, s3, 25, 60)
    assert same(params_of(p3.model), params_of(p1.model))
    assert repr(a3.history) == repr(a1.history)


def test_torch_checkpoint_helpers_keep_the_whole_state():
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    kw = dict(explore_steps=30, saturation_threshold=3.0, eps_threshold=1e-6)
    p1, o1, a1 = make("adam", **kw)
    fresh = get_optimizer_state_dict(p1.model, a1)   # steps the fresh optimizer at rate 0
    assert a1.steps == 0 and a1.probe_forwards == 0 and "autolr" in fresh["param_groups"][0]
    train(p1, a1, 25)
    osd = copy.deepcopy(get_optimizer_state_dict(p1.model, a1))
    p2, o2, a2 = make("adam", seed=5, **kw)
    p2.model.load_state_dict(p1.model.state_dict())
    set_optimizer_state_dict(p2.model, a2, osd)
    assert a2.steps == 25 and a2.lr == a1.lr
    train(p1, a1, 35, start=25)
    train(p2, a2, 35, start=25)
    assert same(params_of(p2.model), params_of(p1.model))
    assert repr(a2.history) == repr(a1.history) and a1.recomputes >= 3


def test_older_state_dicts_still_load():
    kw = dict(explore_steps=30)
    p1, o1, a1 = make("momentum", **kw)
    train(p1, a1, 25)
    sd = a1.state_dict()
    own = sd["param_groups"][0]["autolr"]
    legacy = {"state": sd["state"],
              "param_groups": [{**g["wrapped"], "params": g["params"]} for g in sd["param_groups"]],
              "autolr": {**{k: v for k, v in own.items() if k != "rates"},
                         "ratios": own["rates"]["ratios"]}}
    p2, o2, a2 = make("momentum", **kw)
    p2.model.load_state_dict(p1.model.state_dict())
    a2.load_state_dict(copy.deepcopy(legacy))
    assert a2.steps == 25 and a2.lr == a1.lr
    train(p1, a1, 40, start=25)
    train(p2, a2, 40, start=25)
    assert same(params_of(p2.model), params_of(p1.model))
    with pytest.raises(ValueError, match="2 param groups, this AutoLR has 1"):
        a2.load_state_dict({"state": {}, "param_groups": [sd["param_groups"][0]] * 2})


@pytest.mark.parametrize("style", ["loss-only", "torch-style"])
def test_step_with_a_closure_of_either_convention_equals_the_plain_loop(style):
    """A loss-only closure used to leave the gradients untouched: the wrapped optimizer then stepped
    on the previous step's gradient (or none at all)."""
    kw = dict(explore_steps=30, saturation_threshold=3.0)
    p0, o0, a0 = make("momentum", **kw)
    train(p0, a0, 35)
    p1, o1, a1 = make("momentum", **kw)
    for b in p1.batches(35, seed=1):
        def closure():
            if style == "torch-style":
                a1.zero_grad()
            loss = p1.loss_fn(p1.model, b)
            if style == "torch-style":
                loss.backward()
            return loss
        out = a1.step(closure)
        assert isinstance(out, torch.Tensor)
        if style == "torch-style":
            a1.zero_grad()
    assert same(params_of(p1.model), params_of(p0.model))
    assert repr(a1.history) == repr(a0.history) and a0.recomputes >= 2


def test_drop_rate_over_different_batches_is_not_compared():
    """A batch that turns non-finite only at later parameters must not make the drop rate compare
    a mean over two batches with a mean over one."""
    p = digits_mlp(0, hidden=(16,))
    data = p.batch_list(2, seed=7)
    state = {"poison": False}

    def loss_fn(m, b):
        loss = p.loss_fn(m, b)
        if state["poison"] and b is data[1]:
            return loss * math.inf
        return loss

    a = AutoLR(torch.optim.SGD(p.model.parameters(), lr=0.1), p.model, loss_fn, data,
               recompute_every=5, superbatch=2, explore_steps=100, rollback=False)
    with pytest.warns(RuntimeWarning, match="1 of 2 probe mini-batches"):
        train(p, a, 6, hook=lambda i: state.update(poison=i >= 5))
    h = a.history[-1]
    assert h["step"] == 5 and math.isnan(h["rate"])       # different batches: no rate
    assert a._schedule.skip_prev == (1,)
    with pytest.warns(RuntimeWarning, match="probe mini-batches gave a non-finite loss"):
        train(p, a, 5, start=6)
    assert math.isfinite(a.history[-1]["rate"])             # same batch left out: compared again
