"""autostep.Autostep: the recommended default (ordinary loop, ramp-found scale, decay or Schedule-Free)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import autostep
from autostep.optim.autostep import Autostep
from autostep.optim._autostep_updates import scheduled_rate


def _problem(seed=0, n=256, d=10, classes=3, hidden=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    y = (x @ w).argmax(1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, classes))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]
    return model, batches, (x, y)


def _loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _make(model, batches, **kw):
    kw.setdefault("total_steps", 60)
    return Autostep(model.parameters(), model=model, loss_fn=_loss, probe_data=batches[-2:], **kw)


def _train(model, opt, batches, steps):
    for t in range(steps):
        b = batches[t % (len(batches) - 2)]
        opt.zero_grad()
        _loss(model, b).backward()
        opt.step()


def test_exported_and_registered():
    assert autostep.Autostep is Autostep
    assert "Autostep" in autostep.list_methods()


def test_ordinary_loop_trains_and_anneals_to_zero():
    model, batches, (x, y) = _problem()
    opt = _make(model, batches, total_steps=80)
    with torch.no_grad():
        start = F.cross_entropy(model(x), y).item()
    _train(model, opt, batches, 80)
    with torch.no_grad():
        end = F.cross_entropy(model(x), y).item()
    g = opt.param_groups[0]
    assert end < 0.5 * start
    assert g["phase"] == "train" and math.isfinite(g["peak_lr"]) and g["peak_lr"] > 0
    # the last step of the linear decay to zero at T applies one step's share of the peak
    assert g["applied_lr"] == pytest.approx(g["peak_lr"] / (80 - g["ramp_end"]))
    assert opt.probe_forwards > 0 and opt.forwards == opt.probe_forwards + 80


def test_ramp_rises_geometrically_until_the_edge():
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=200, ramp_steps=40)
    rates = []
    for t in range(12):
        b = batches[t % 6]
        opt.zero_grad()
        _loss(model, b).backward()
        opt.step()
        if opt.param_groups[0]["phase"] != "ramp":
            break
        rates.append(opt.param_groups[0]["applied_lr"])
    growth = opt.param_groups[0]["ramp_growth"]
    assert len(rates) >= 3
    for a, b in zip(rates[1:], rates[2:]):
        assert b == pytest.approx(a * growth)


def test_crossing_the_edge_rolls_back_to_the_best_point():
    # a rate far beyond the edge: the ramp must restore the best parameters and pick a fraction
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=100, ramp_steps=50, ramp_growth=4.0)
    seen = []
    for t in range(50):
        b = batches[t % 6]
        opt.zero_grad()
        _loss(model, b).backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        g = opt.param_groups[0]
        if g["phase"] == "train":
            snap = [opt.state[p]["snapshot"] for p in model.parameters()]
            for p, s in zip(model.parameters(), snap):
                assert torch.equal(p, s)  # restored exactly to the best point
            assert g["peak_lr"] == pytest.approx(g["best_lr"] * g["peak_fraction"])
            assert g["rollbacks"] >= 1
            seen.append(before)
            break
    assert seen, "a x4-per-step ramp must cross the edge within 50 steps"


def test_non_finite_gradient_skips_and_changes_nothing():
    model, batches, _ = _problem()
    opt = _make(model, batches)
    _train(model, opt, batches, 5)
    before_sd = copy.deepcopy(opt.state_dict())
    before_p = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _loss(model, batches[0]).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    opt.step()
    assert opt.skipped_steps == 1
    for p, q in zip(model.parameters(), before_p):
        assert torch.equal(p, q)
    after_sd = opt.state_dict()
    for k, st in before_sd["state"].items():
        for name, v in st.items():
            w = after_sd["state"][k][name]
            assert torch.equal(w, v) if torch.is_tensor(v) else w == v, name
    for g0, g1 in zip(before_sd["param_groups"], after_sd["param_groups"]):
        assert {k: v for k, v in g0.items() if k != "skipped"} == {k: v for k, v in g1.items() if k != "skipped"}


def test_huge_finite_gradient_is_not_mistaken_for_a_non_finite_one():
    """Finite float32 gradients whose squares overflow (|g| ~ 1e20) are a step, not a skip: the
    fast 2-norm test is confirmed by the exact one before a step is skipped."""
    model, batches, _ = _problem()
    opt = _make(model, batches)
    _train(model, opt, batches, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _loss(model, batches[0]).backward()
    next(model.parameters()).grad[0, 0] = 1e20
    opt.step()
    assert opt.skipped_steps == 0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("cut", [3, 20])  # mid-ramp and after the ramp
def test_state_dict_resumes_bit_for_bit(cut):
    model, batches, _ = _problem()
    opt = _make(model, batches)
    _train(model, opt, batches, cut)
    sd = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    opt2 = _make(twin, batches)
    opt2.load_state_dict(sd)
    assert "autostep" not in sd and set(sd) == {"state", "param_groups"}
    for t in range(cut, cut + 15):
        for m, o in ((model, opt), (twin, opt2)):
            o.zero_grad()
            _loss(m, batches[t % 6]).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_distributed_checkpoint_helpers_keep_the_state():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model, batches, _ = _problem()
    opt = _make(model, batches)
    _train(model, opt, batches, 25)
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
    twin = copy.deepcopy(model)
    fresh = _make(twin, batches)
    set_optimizer_state_dict(twin, fresh, saved)
    assert fresh.param_groups[0]["k"] == 25 and fresh.param_groups[0]["phase"] == opt.param_groups[0]["phase"]
    for t in range(25, 35):
        for m, o in ((model, opt), (twin, fresh)):
            o.zero_grad()
            _loss(m, batches[t % 6]).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_scheduler_scales_the_found_rate():
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=40)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.25)
    _train(model, opt, batches, 1)
    sched.step()
    for t in range(1, 25):
        opt.zero_grad()
        _loss(model, batches[t % 6]).backward()
        opt.step()
        sched.step()
        g = opt.param_groups[0]
        assert g["lr"] == 0.25
        if g["phase"] == "ramp":
            assert g["applied_lr"] == pytest.approx(0.25 * g["ramp_lr"])
    assert g["phase"] == "train"
    assert g["applied_lr"] == pytest.approx(0.25 * scheduled_rate(opt.param_groups[0], g["k"] - 1))


def test_schedule_free_mode_eval_train_round_trip():
    model, batches, (x, y) = _problem()
    opt = _make(model, batches, total_steps=None, ramp_steps=10)
    _train(model, opt, batches, 40)
    assert opt.param_groups[0]["phase"] == "train"
    assert all("z" in opt.state[p] for p in model.parameters())
    y_params = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    x_params = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(y_params, x_params))
    opt.eval()  # idempotent
    opt.train()
    for p, q in zip(model.parameters(), y_params):
        assert torch.allclose(p, q, atol=1e-6)
    with torch.no_grad():
        opt.eval()
        loss = F.cross_entropy(model(x), y).item()
    assert loss < math.log(3)


def test_closure_mode_torch_style():
    model, batches, _ = _problem()
    opt = Autostep(model.parameters(), total_steps=30, probe="closure")
    for t in range(30):
        b = batches[t % 6]

        def closure():
            opt.zero_grad()
            loss = _loss(model, b)
            loss.backward()
            return loss
        loss = opt.step(closure)
        assert torch.is_tensor(loss)
    assert opt.param_groups[0]["phase"] == "train"


def test_closure_mode_without_closure_says_how():
    model, batches, _ = _problem()
    opt = Autostep(model.parameters(), total_steps=30, probe="closure")
    _loss(model, batches[0]).backward()
    opt.step()  # the first step only starts the ramp
    _loss(model, batches[0]).backward()
    with pytest.raises(RuntimeError, match="step\\(closure\\)"):
        opt.step()


@pytest.mark.parametrize("kw, match", [
    (dict(lr=float("nan")), "lr"),
    (dict(lr=-1.0), "lr"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=2.5), "total_steps"),
    (dict(betas=(1.0, 0.999)), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(decay="step"), "decay"),
    (dict(peak_fraction=2.0), "peak_fraction"),
    (dict(probe="batch"), "probe"),
    (dict(ramp_steps=1), "ramp_steps"),
    (dict(ramp_growth=1.0), "ramp_growth"),
    (dict(probe_batches=0), "probe_batches"),
    (dict(guard_every=-1), "guard_every"),
    (dict(betas="ab"), "betas"),
])
def test_bad_arguments_name_the_value(kw, match):
    model, batches, _ = _problem()
    with pytest.raises(ValueError, match=match):
        _make(model, batches, **kw)


def test_missing_probe_source_is_refused_at_construction():
    model, batches, _ = _problem()
    with pytest.raises(ValueError, match="probe_data"):
        Autostep(model.parameters(), total_steps=10, model=model, loss_fn=_loss)
    with pytest.raises(TypeError, match="one-shot"):
        Autostep(model.parameters(), total_steps=10, model=model, loss_fn=_loss,
                 probe_data=(b for b in batches))


def test_nan_multiplier_from_a_scheduler_is_refused_at_the_next_step():
    model, batches, _ = _problem()
    opt = _make(model, batches)
    _train(model, opt, batches, 3)
    opt.param_groups[0]["lr"] = float("nan")
    _loss(model, batches[0]).backward()
    with pytest.raises(ValueError, match="nan"):
        opt.step()


def test_weight_decay_is_decoupled():
    model, batches, _ = _problem()
    a = copy.deepcopy(model)
    o0 = _make(model, batches)
    o1 = _make(a, batches, weight_decay=0.5)
    _train(model, o0, batches, 15)
    _train(a, o1, batches, 15)
    n0 = sum(p.norm() ** 2 for p in model.parameters())
    n1 = sum(p.norm() ** 2 for p in a.parameters())
    assert n1 < n0


def test_probe_leaves_batchnorm_buffers_and_rng_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 2))
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    opt = Autostep(model.parameters(), total_steps=20, model=model, loss_fn=_loss, probe_data=[(x, y)])
    _loss(model, (x, y)).backward()
    bn = model[1]
    mean = bn.running_mean.clone()
    rng = torch.get_rng_state()
    opt.step()  # the first step evaluates the probe 7 times
    assert opt.probe_forwards == 7 and opt.forwards == 8
    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("decay, mid", [("linear", 0.5), ("cosine", 0.5)])
def test_decay_shapes_reach_zero_at_total_steps(decay, mid):
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=110, decay=decay)
    opt._set(phase="train", peak_lr=2.0, ramp_end=10)
    assert scheduled_rate(opt.param_groups[0], 10) == pytest.approx(2.0)
    assert scheduled_rate(opt.param_groups[0], 60) == pytest.approx(2.0 * mid)
    assert scheduled_rate(opt.param_groups[0], 110) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_rate(opt.param_groups[0], 35) == pytest.approx(1.5 if decay == "linear" else 1.0 + math.cos(math.pi / 4))


def test_a_decaying_scheduler_on_top_of_the_own_decay_warns_once():
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=40)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / 50)
    with pytest.warns(UserWarning, match="multiply") as rec:
        for t in range(6):
            opt.zero_grad()
            _loss(model, batches[t % 6]).backward()
            opt.step()
            sched.step()
    assert sum("multiply" in str(w.message) for w in rec) == 1


def test_a_constant_scheduler_does_not_warn():
    import warnings as w
    model, batches, _ = _problem()
    opt = _make(model, batches, total_steps=40)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    with w.catch_warnings():
        w.simplefilter("error")
        for t in range(6):
            opt.zero_grad()
            _loss(model, batches[t % 6]).backward()
            opt.step()
            sched.step()


@pytest.mark.parametrize("fail_at", [1, 4, 9])  # in the first step's line search, and in the ramp
def test_an_exception_in_the_probe_leaves_everything_as_it_was(fail_at):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    calls = {"n": 0, "fail": None}

    def loss_fn(m, b):
        calls["n"] += 1
        if calls["n"] == calls["fail"]:
            raise KeyboardInterrupt
        return F.cross_entropy(m(b[0]), b[1])

    opt = Autostep(model.parameters(), total_steps=50, model=model, loss_fn=loss_fn, probe_data=[(x, y)])
    steps_before = 0 if fail_at < 8 else 1
    for _ in range(steps_before):  # the first step spends 7 probe calls
        opt.zero_grad()
        F.cross_entropy(model((x)), y).backward()
        opt.step()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    sd = copy.deepcopy(opt.state_dict())
    calls["fail"] = calls["n"] + (fail_at if fail_at < 8 else 1)
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    for b, c in zip(model.buffers(), buffers):
        assert torch.equal(b, c)
    assert repr(opt.state_dict()["param_groups"]) == repr(sd["param_groups"])  # repr: nan == nan
    opt.step()  # and the step can simply be retried
    assert opt.param_groups[0]["k"] == steps_before + 1
