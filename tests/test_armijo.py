"""Math tests of the Armijo family: criteria re-derived from the returned state, convergence."""

import math

import pytest
import torch
from torch import nn

import autostep
from counting import count_calls

A = torch.tensor([1.0, 10.0, 0.1])


def quad(w):
    return 0.5 * (A * w * w).sum()


def quad_grad(w):
    return A * w


def new_w(values=(1.0, -2.0, 3.0)):
    return nn.Parameter(torch.tensor(values))


def test_sls_accepts_the_first_size_satisfying_armijo():
    w = new_w()
    opt = autostep.SLS([w], lr=1.0, c=0.1, backtrack=0.5)
    for _ in range(5):
        w0 = w.detach().clone()
        opt.step(lambda: quad(w))
        eta, info = opt.param_groups[0]["lr"], opt.last_step
        g0 = quad_grad(w0)
        # the applied point is the tested point w0 - eta g
        assert torch.allclose(w.detach(), w0 - eta * g0)
        dec = float(quad(w0) - quad(w.detach()))
        assert dec == pytest.approx(info["decrease"], rel=1e-5)
        assert dec >= 0.1 * eta * float(g0 @ g0) - 1e-6
        if info["trials"] > 1:  # the previous, larger size failed
            bigger = eta / 0.5
            assert float(quad(w0) - quad(w0 - bigger * g0)) < 0.1 * bigger * float(g0 @ g0)


def test_sls_step_size_growth_and_cap():
    w = new_w((1e-3, 1e-3, 1e-3))
    opt = autostep.SLS([w], lr=1e-3, growth_steps=10, max_lr=1.5e-3)
    opt.step(lambda: quad(w))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 ** 0.1)
    for _ in range(20):
        opt.step(lambda: quad(w))
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5e-3)


def test_sls_double_reset_rule():
    w = new_w((1e-3, 1e-3, 1e-3))
    opt = autostep.SLS([w], lr=1e-3, reset="double", reset_every=3)
    lrs = []
    for _ in range(6):
        opt.step(lambda: quad(w))
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 4e-3])


def test_counters():
    w = new_w()
    opt = autostep.SLS([w], lr=1.0, backtrack=0.5)
    for _ in range(7):
        opt.step(lambda: quad(w))
    assert opt.backwards == 7
    assert opt.forwards == 7 + opt.trials
    assert opt.trials >= 7 and opt.steps == 7


def test_zero_gradient_costs_no_trial():
    w = new_w((0.0, 0.0, 0.0))
    opt = autostep.SLS([w])
    opt.step(lambda: quad(w))
    assert opt.trials == 0 and opt.forwards == 1
    assert opt.last_step["skipped"] == "zero direction"
    assert torch.equal(w.detach(), torch.zeros(3))
    assert opt.param_groups[0]["lr"] == 1.0


@pytest.mark.parametrize("cls", [autostep.SLS, autostep.AdamSLS, autostep.SALSA, autostep.ALSALS, autostep.PLASLS])
def test_exhaustion_skips_the_step_and_keeps_a_sane_step_size(cls):
    w = new_w()
    opt = cls([w], lr=0.5, max_trials=6, backtrack=0.5)
    w0 = w.detach().clone()

    def closure():  # every trial point is non-finite
        return quad(w) if torch.is_grad_enabled() else quad(w) * math.inf

    opt.step(closure)
    assert torch.equal(w.detach(), w0)
    assert opt.skipped_steps == 1 and opt.trials == 6
    assert opt.last_step["skipped"] == "max_trials exhausted"
    start = 0.5 if cls is not autostep.PLASLS else 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(start * 2 ** (1 / 500) * 0.5 ** 5)


def test_min_lr_floor_stops_the_search_early():
    w = new_w()
    opt = autostep.SLS([w], lr=1e-3, min_lr=1e-4, backtrack=0.1, max_trials=50)
    opt.step(lambda: quad(w) if torch.is_grad_enabled() else quad(w) + 1.0)
    assert opt.trials < 5
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_nan_trial_is_a_rejection():
    w = new_w()
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        return quad(w) * (math.nan if calls["n"] == 2 else 1.0)

    opt = autostep.SLS([w], lr=0.01)
    opt.step(closure)
    assert opt.last_step["trials"] == 2 and opt.last_step["accepted"]


def test_salsa_smoothed_criterion_rederived():
    torch.manual_seed(0)
    w = new_w()
    beta, c = 0.9, 0.5
    opt = autostep.SALSA([w], direction="sgd", lr=1.0, max_lr=10.0, c=c, smooth=beta)
    h = s = 0.0
    for k in range(1, 30):
        noise = 0.1 * torch.randn(3)
        g = quad_grad(w.detach()) + noise
        opt.step(lambda: quad(w) + (noise * w).sum())
        info = opt.last_step
        h = beta * h + (1 - beta) * info["decrease"]
        s = beta * s + (1 - beta) * float(g @ g)
        terms = opt.smoothed_terms
        corr = 1 - beta ** k
        assert terms["h"] == pytest.approx(h / corr, rel=1e-5)
        assert terms["s"][0] == pytest.approx(s / corr, rel=1e-4)
        eta = opt.param_groups[0]["lr"]
        assert terms["h"] >= c * eta * terms["s"][0] * (1 - 1e-6)
    assert float(quad(w.detach())) < 0.5 < float(quad(new_w().detach()))


def test_alsals_criterion_with_exact_directional_derivative():
    w = new_w()
    opt = autostep.ALSALS([w], lr=1.0, c=0.6)
    w0 = w.detach().clone()
    opt.step(lambda: quad(w))
    g = quad_grad(w0)
    # first Adam step: m_hat = g, v_hat = g^2, d = g / (|g| + eps)
    d = g / (g.abs() + 1e-8)
    eta = opt.param_groups[0]["lr"]
    assert torch.allclose(w.detach(), w0 - eta * d, atol=1e-6)  # tested point = applied point
    f_a = float(g @ d)
    dec = float(quad(w0) - quad(w.detach()))
    assert dec >= 0.6 * eta * f_a - 1e-5


def test_alsals_c_h_switch_accepts_a_bounded_increase():
    # linear losses: step 1 along a, step 2 along -0.01 a; momentum still points along a,
    # so f_a = <g2, d> < 0 and c_h = 1/c lets the (exactly linear) increase eta*|f_a| pass.
    w = nn.Parameter(torch.zeros(2))
    a = torch.tensor([1.0, 1.0])
    opt = autostep.ALSALS([w], lr=0.01, c=0.6, max_lr=1.0)
    opt.step(lambda: (a * w).sum())
    opt.step(lambda: (-0.01 * a * w).sum() + 1.0)
    info = opt.last_step
    assert info["accepted"] and info["trials"] == 1
    assert info["decrease"] < 0  # the loss went up, as eq. 8-9 allow when f_a <= 0


def test_adamsls_final_update_equals_torch_adam_with_the_accepted_size():
    w = new_w()
    opt = autostep.AdamSLS([w], lr=0.05)
    w0 = w.detach().clone()
    opt.step(lambda: quad(w))
    eta = opt.param_groups[0]["lr"]
    ref = nn.Parameter(w0.clone())
    adam = torch.optim.Adam([ref], lr=eta)
    quad(ref).backward()
    adam.step()
    assert torch.allclose(w.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    # and the searched point (beta1 = 0) satisfied eq. 5
    g = quad_grad(w0)
    denom = g.abs() + 1e-8
    d_search = g / denom
    pp = float((g * g / denom).sum())
    assert float(quad(w0) - quad(w0 - eta * d_search)) >= 0.1 * eta * pp - 1e-6


def test_sls_converges_on_convex_logistic_regression():
    from sklearn.datasets import load_breast_cancer

    xs, ys = load_breast_cancer(return_X_y=True)
    x = torch.tensor(xs, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(ys, dtype=torch.float64)
    lam = 1e-2

    def loss_of(w, b):
        z = x @ w + b
        return nn.functional.binary_cross_entropy_with_logits(z, y) + 0.5 * lam * (w @ w)

    w_ref = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    b_ref = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w_ref, b_ref], max_iter=500, tolerance_grad=1e-12,
                              tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def lb_closure():
        lbfgs.zero_grad()
        loss = loss_of(w_ref, b_ref)
        loss.backward()
        return loss

    lbfgs.step(lb_closure)
    f_star = float(loss_of(w_ref, b_ref).detach())

    w = nn.Parameter(torch.zeros(30, dtype=torch.float64))
    b = nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = autostep.SLS([w, b])
    gaps = []
    for t in range(300):
        opt.step(lambda: loss_of(w, b))
        gaps.append(float(loss_of(w, b).detach()) - f_star)
    assert gaps[-1] < 1e-6 * max(1.0, abs(f_star)) + 1e-9
    assert gaps[-1] < gaps[10] / 100
    assert opt.skipped_steps == 0


def test_sls_minibatch_logistic_regression_gets_close():
    from sklearn.datasets import load_breast_cancer

    xs, ys = load_breast_cancer(return_X_y=True)
    x = torch.tensor(xs, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(ys, dtype=torch.float32)
    model = nn.Linear(30, 1)
    opt = autostep.SLS(model.parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full0 = float(nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y))
    for _ in range(300):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.step(lambda: nn.functional.binary_cross_entropy_with_logits(model(x[idx]).squeeze(1), y[idx]))
    with torch.no_grad():
        full = float(nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y))
    assert full < 0.1 < full0


def test_a_scheduler_value_caps_the_step_until_the_next_write():
    w = new_w((1e-3, 1e-3, 1e-3))
    opt = autostep.SLS([w], lr=1e-2, growth_steps=100)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    opt.step(lambda: quad(w))
    eta1 = opt.param_groups[0]["lr"]
    assert eta1 == pytest.approx(1e-2 * 2 ** 0.01)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(eta1 / 2)
    opt.step(lambda: quad(w))  # capped at eta1/2; the cap was accepted as it is
    assert opt.param_groups[0]["lr"] == pytest.approx(eta1 / 2)
    assert opt.param_groups[0]["step_size"] == pytest.approx(eta1 * 2 ** 0.01)  # its own, grown
    opt.step(lambda: quad(w))  # no write in between: the cap still holds
    assert opt.param_groups[0]["lr"] == pytest.approx(eta1 / 2)
    sched.step()  # chainable: halves the applied step again
    opt.step(lambda: quad(w))
    assert opt.param_groups[0]["lr"] == pytest.approx(eta1 / 4)
    opt.param_groups[0]["lr"] = 10.0  # a write above the search's step size lifts the cap
    opt.step(lambda: quad(w))
    assert opt.param_groups[0]["lr"] == pytest.approx(eta1 * 2 ** 0.04)


def test_schedulers_do_not_restart_the_search():
    # constant LambdaLR / warm-up: as many forwards as without a scheduler; after the warm-up the
    # search continues from its own step size
    def run(sched_fn):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(256, 10, generator=g), torch.randn(256, 1, generator=g)
        opt = autostep.SALSA(net.parameters())
        sched = sched_fn(opt) if sched_fn else None
        for _ in range(60):
            idx = torch.randint(0, 256, (32,), generator=g)
            opt.step(lambda: nn.functional.mse_loss(net(x[idx]), y[idx]))
            if sched:
                sched.step()
        return opt

    free = run(None)
    const = run(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0))
    assert const.forwards == free.forwards
    assert const.last_step["step_sizes"] == free.last_step["step_sizes"]
    warm = run(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: min(1.0, t / 10)))
    assert warm.forwards <= 2.3 * 60
    linear = run(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: max(0.0, 1 - t / 60)))
    assert linear.forwards <= 2.3 * 60
    assert linear.last_step["step_sizes"][0] <= 0.1 / 60 + 1e-12  # follows the schedule at the end


def test_lambda_scheduler_acts_as_a_cap():
    w = new_w()
    opt = autostep.SLS([w], lr=1.0, backtrack=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1e-3 * (t + 1))
    for t in range(4):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (t + 1))
        opt.step(lambda: quad(w))
        assert opt.param_groups[0]["lr"] <= 1e-3 * (t + 1) + 1e-12
        sched.step()


def test_plasls_layers_by_module_names_and_by_forward_order_agree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    a = autostep.PLASLS(net.parameters())
    a.step(lambda: nn.functional.mse_loss(net(x), y))
    assert a.param_groups[0]["layers"] == [[0, 1], [2, 3]]
    assert list(a.layer_step_sizes) == ["0:Linear", "1:Linear"]
    b = autostep.PLASLS(net.named_parameters())
    b.step(lambda: nn.functional.mse_loss(net(x), y))
    assert b.param_groups[0]["layers"] == [[0, 1], [2, 3]]
    assert list(b.layer_step_sizes) == ["0", "2"]


def test_plasls_per_layer_criterion_and_group_lr():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(32, 16), torch.randn(32, 2)
    opt = autostep.PLASLS(net.named_parameters(), lr=0.2, c=0.5, backtrack=0.7)
    params = list(net.parameters())
    w0 = [p.detach().clone() for p in params]
    opt.step(lambda: nn.functional.mse_loss(net(x), y))
    grads = [p.grad for p in params]
    etas = list(opt.layer_step_sizes.values())
    assert etas[0] != etas[1]  # each layer found its own step size
    dec = opt.last_step["decrease"]
    for layer, eta in zip([[0, 1], [2, 3]], etas):
        s = sum(float((grads[i] ** 2 / (grads[i].abs() + 1e-8)).sum()) for i in layer)
        assert dec >= 0.5 * eta * s - 1e-6
    gm = math.exp(sum(math.log(e) for e in etas) / 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(gm)
    # the update is Adam's step 1 per layer: w0 - eta_l * g / (|g| + eps)
    for layer, eta in zip([[0, 1], [2, 3]], etas):
        for i in layer:
            expect = w0[i] - eta * grads[i] / (grads[i].abs() + 1e-8)
            assert torch.allclose(params[i].detach(), expect, atol=1e-6)


def test_plasls_scheduler_caps_every_layer_alike():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    opt = autostep.PLASLS(net.parameters(), lr=0.5, backtrack=0.5, growth_steps=1e9)
    opt.step(lambda: nn.functional.mse_loss(net(x), y))
    before = list(opt.layer_step_sizes.values())
    gm = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = gm * 1e-3  # far below: every layer is accepted at the cap
    w0 = [p.detach().clone() for p in net.parameters()]
    opt.step(lambda: nn.functional.mse_loss(net(x), y))
    assert opt.param_groups[0]["lr"] == pytest.approx(gm * 1e-3, rel=1e-6)
    assert list(opt.layer_step_sizes.values()) == pytest.approx(before, rel=1e-6)  # kept
    assert not all(torch.equal(a, b) for a, b in zip(w0, net.parameters()))


def test_amortized_mode_reuses_the_step_size():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(20))
    scales = torch.linspace(0.5, 2.0, 20)
    target = torch.randn(20)

    def closure():
        return 0.5 * (scales * (w - target) ** 2).sum() + 1.0

    start = float(closure().detach())
    opt = autostep.SALSA([w], amortize=10, lr=0.1)
    reused = 0
    for _ in range(200):
        opt.step(closure)
        reused += bool(opt.last_step.get("reused"))
    assert reused > 100
    assert opt.trials < 100
    assert opt.forwards == 200 + opt.trials
    assert float(closure().detach()) < 1.0 + 1e-3 * (start - 1.0)
    plain = autostep.SALSA([nn.Parameter(torch.randn(20))], lr=0.01)
    assert plain.defaults["amortize"] == 0


def test_amortize_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="amortize"):
        autostep.SALSA([new_w()], amortize=-1)
    with pytest.raises(ValueError, match="amortize"):
        autostep.ALSALS([new_w()], amortize=2.5)


def test_shared_hyper_parameters_must_agree_across_groups():
    with pytest.raises(ValueError, match="max_trials must be the same"):
        autostep.SLS([{"params": [new_w()]}, {"params": [new_w()], "max_trials": 3}])
    with pytest.raises(ValueError, match="direction"):
        autostep.SALSA([new_w()], direction="newton")
    with pytest.raises(ValueError, match="betas"):
        autostep.ALSALS([new_w()], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="exceed max_lr"):
        autostep.SLS([new_w()], lr=20.0)


def test_wrong_parameters_warn_once_and_change_nothing():
    model = nn.Linear(3, 1)
    other = nn.Linear(3, 1)
    opt = autostep.SALSA(other.parameters())
    before = [p.detach().clone() for p in other.parameters()]
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="none of the optimizer's parameters received a gradient"):
        opt.step(lambda: model(x).pow(2).mean())
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
    assert opt.last_step["skipped"] == "no gradients"


def test_sparse_gradients_are_refused_with_a_clear_error():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = autostep.SLS(emb.parameters())
    idx = torch.tensor([1, 2])
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step(lambda: emb(idx).pow(2).sum())
    assert torch.equal(emb.weight.detach(), before)


def test_reused_steps_compute_no_decrease_terms(monkeypatch):
    import autostep.optim._adam_direction as direction_module

    calls = count_calls(monkeypatch, direction_module, "decrease_terms")
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(20))
    target = torch.randn(20)
    opt = autostep.SALSA([w], amortize=10, lr=0.1)
    reused = 0
    for _ in range(150):
        opt.step(lambda: 0.5 * ((w - target) ** 2).sum() + 1.0)
        reused += bool(opt.last_step.get("reused"))
    assert reused > 50
    assert calls["n"] == opt._ls["searches"]  # one decrease term per search, none per reused step


SMOOTHING_AND_AMORTIZE_KEYS = {"since_search", "interval", "log_eta_fast", "log_eta_slow", "h_ema",
                               "s_ema", "ema_count"}


def _mlp_run(cls, steps, model=None, opt_state=None):
    """A small MLP trained ``steps`` steps on fixed batches; returns (model, optimizer, losses)."""
    import copy

    if model is None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    model = copy.deepcopy(model)
    opt = cls(model.parameters())
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    gen = torch.Generator().manual_seed(opt.steps)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
        losses.append(float(opt.step(lambda: nn.functional.mse_loss(model(x), y))))
    return model, opt, losses


@pytest.mark.parametrize("cls", [autostep.SLS, autostep.AdamSLS, autostep.PLASLS])
def test_plain_armijo_keeps_no_smoothing_state_and_loads_older_checkpoints(cls):
    import copy

    model, opt, _ = _mlp_run(cls, 3)
    sd = opt.state_dict()
    assert not SMOOTHING_AND_AMORTIZE_KEYS & set(sd["param_groups"][0]["autostep"])
    # what older versions saved for every Armijo optimizer (these values for one that neither
    # smooths nor amortises): it loads, and the run continues exactly as the uninterrupted one
    old = copy.deepcopy(sd)
    old["param_groups"][0]["autostep"].update(since_search=0, interval=1, log_eta_fast=None,
                                              log_eta_slow=None, h_ema=0.0, s_ema=[], ema_count=0)
    _, opt_a, losses_a = _mlp_run(cls, 3, model, sd)
    resumed, opt_b, losses_b = _mlp_run(cls, 3, model, old)
    assert losses_a == losses_b and opt_a.state_dict()["param_groups"] == opt_b.state_dict()["param_groups"]
    assert not SMOOTHING_AND_AMORTIZE_KEYS & set(opt_b._ls)


@pytest.mark.parametrize("cls", [autostep.SALSA, autostep.ALSALS])
def test_smoothed_armijo_keeps_its_state(cls):
    _, opt, _ = _mlp_run(cls, 2)
    assert SMOOTHING_AND_AMORTIZE_KEYS <= set(opt.state_dict()["param_groups"][0]["autostep"])
