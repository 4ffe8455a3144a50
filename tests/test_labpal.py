"""LABPAL: exact estimate on quadratics, phases, the batch-size schedule, noise factor, failures."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import autostep
from autostep.optim.labpal import LABPAL


N = 6


def problem(n_batches=40, seed=0):
    """Per-batch quadratics l_i(w) = 0.5 sum A (w - c_i)^2: every line is exactly a parabola."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    w = nn.Parameter(torch.randn(N, generator=g, dtype=torch.float64))
    cs = [torch.randn(N, generator=g, dtype=torch.float64) for _ in range(n_batches)]
    return A, w, cs


def closure_for(A, w, c):
    return lambda: 0.5 * (A * (w - c) ** 2).sum()


@pytest.mark.parametrize("mode", ["sgd", "nsgd"])
def test_estimate_is_alpha_times_exact_line_minimum(mode):
    A, w, cs = problem()
    nb = 4
    opt = LABPAL([w], mode=mode, approx_batches=nb, max_step=100.0)
    w0 = w.detach().clone()
    g1 = A * (w0 - cs[0])
    u = g1 / g1.norm()
    cbar = torch.stack(cs[:nb]).mean(0)
    s_star = float((u * A * (w0 - cbar)).sum() / (u * A * u).sum())  # full-batch line minimum
    assert s_star > 0
    for i in range(nb):
        opt.step(closure_for(A, w, cs[i]))
        assert torch.equal(w.detach(), w0)  # no update while approximating
        assert opt.last_step["phase"] == "approx" and not opt.last_step["updated"]
    fit = opt.last_step["fit"]
    assert fit["ok"] and fit["n"] == nb
    assert fit["s_min"] == pytest.approx(s_star, rel=1e-4)
    assert opt._ls["est_step"] == pytest.approx(1.8 * s_star, rel=1e-4)
    assert (opt.forwards, opt.backwards, opt.trials, opt.steps) == (3 * nb, 1, 2 * nb, nb)
    lr = 1.8 * s_star / float(g1.norm())
    if mode == "sgd":
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-4)
    # first training call: SGD with the reused lr, or NSGD with the reused step
    g5 = A * (w0 - cs[nb])
    opt.step(closure_for(A, w, cs[nb]))
    assert opt.last_step["updated"]
    if mode == "sgd":
        expected = w0 - lr * g5
    else:
        expected = w0 - 1.8 * s_star * g5 / g5.norm()
        assert opt.param_groups[0]["lr"] == pytest.approx(1.8 * s_star / float(g5.norm()), rel=1e-4)
    assert torch.allclose(w.detach(), expected, rtol=1e-6, atol=1e-9)


def test_max_step_caps_s_min_before_alpha():
    A, w, cs = problem()
    opt = LABPAL([w], mode="nsgd", approx_batches=2, max_step=1e-3)
    for i in range(2):
        opt.step(closure_for(A, w, cs[i]))
    assert opt._ls["est_step"] == pytest.approx(1.8e-3)


def test_phases_alternate_and_every_batch_counts():
    A, w, cs = problem()
    opt = LABPAL([w], approx_batches=2, reuse_steps=3)
    phases = []
    for i in range(12):
        opt.step(closure_for(A, w, cs[i]))
        phases.append(opt.last_step["phase"])
    assert phases == ["approx"] * 2 + ["train"] * 3 + ["approx"] * 2 + ["train"] * 3 + ["approx"] * 2
    assert opt.steps == 12 and opt.updates == 6 and opt.estimates == 3


def test_batch_size_schedule_accumulates_1_2_4_batches():
    A, w, cs = problem(n_batches=60)
    T = 40  # k = 1 for windows starting at t <= 20, 2 for t <= 30, else 4
    opt = LABPAL([w], approx_batches=1, reuse_steps=10_000, total_steps=T, max_step=100.0)
    updated_at, ks = [], {}
    for t in range(47):
        w_before = w.detach().clone()
        grads_window = ks.setdefault("g", [])
        grads_window.append(A * (w_before - cs[t]))
        opt.step(closure_for(A, w, cs[t]))
        if opt.last_step["updated"]:
            updated_at.append(t)
            k = opt.last_step["k"]
            ks[t] = k
            mean_g = torch.stack(grads_window[-k:]).mean(0)
            lr = opt.param_groups[0]["lr"]
            assert torch.allclose(w_before - w.detach(), lr * mean_g, rtol=1e-9, atol=1e-12)
            ks["g"] = []
        elif opt.last_step["phase"] == "approx":
            ks["g"] = []
        else:
            assert torch.equal(w.detach(), w_before)  # accumulating: no update
    expected = list(range(1, 21)) + [22, 24, 26, 28, 30] + [34, 38, 42, 46]
    assert updated_at == expected
    assert [ks[t] for t in expected] == [1] * 20 + [2] * 5 + [4] * 4


def test_noise_factor_eq_7_scales_the_schedule():
    w = nn.Parameter(torch.zeros(2))
    opt = LABPAL([w], dataset_size=40_000, batch_size=10, total_steps=100)
    assert opt.noise_factor == pytest.approx(12.8)
    assert [opt.batch_multiplier(t) for t in (0, 50, 51, 75, 76)] == [13, 13, 26, 26, 51]
    assert LABPAL.paper_step_budget(40_000, 10) == 1_920_000
    assert LABPAL([w], noise_factor=2.0).batch_multiplier(10**6) == 2
    assert LABPAL([w]).noise_factor == 1.0
    with pytest.raises(ValueError, match="either noise_factor"):
        LABPAL([w], noise_factor=2.0, dataset_size=10, batch_size=2)
    with pytest.raises(ValueError, match="together"):
        LABPAL([w], dataset_size=10)
    for bad in ({"mode": "adam"}, {"alpha": 0.0}, {"approx_batches": 0}, {"reuse_steps": 1.5},
                {"measuring_step": -1.0}, {"max_step": 0.0}, {"momentum": -0.1},
                {"total_steps": 0}, {"noise_factor": math.inf}, {"lr": math.nan}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            LABPAL([w], **bad)


def test_schedule_accumulation_survives_state_dict_round_trip():
    A, w, cs = problem(n_batches=40)
    opt = LABPAL([w], approx_batches=3, reuse_steps=4, total_steps=16, momentum=0.5)
    for t in range(13):  # stop inside a k = 2 / 4 window
        opt.step(closure_for(A, w, cs[t]))
    assert opt._ls["pos"] > 0
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    w2 = nn.Parameter(w.detach().clone())
    opt2 = LABPAL([w2], approx_batches=3, reuse_steps=4, total_steps=16, momentum=0.5)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    for t in range(13, 40):
        opt.step(closure_for(A, w, cs[t]))
        opt2.step(closure_for(A, w2, cs[t]))
        assert torch.equal(w, w2)
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]


def test_failed_fit_without_estimate_uses_best_tested_point_or_measures_again():
    # concave along the line: the fit fails, the best tested position (2 mu) is used, no alpha
    w = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    opt = LABPAL([w], mode="nsgd", approx_batches=2, measuring_step=0.01)
    for _ in range(2):
        opt.step(lambda: -(w ** 2).sum() + w.sum())
    fit = opt.last_step["fit"]
    assert not fit["ok"] and fit["reason"] == "curvature <= 0" and fit["fallback"] == 0.02
    assert opt.phase == "train" and opt.failed_fits == 1
    # the averaged loss rises along the line: no estimate, the next call measures again
    v = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt2 = LABPAL([v], approx_batches=2)
    opt2.step(lambda: ((v - 0.0) ** 2).sum())  # direction: decrease v
    opt2.step(lambda: ((v - 5.0) ** 2).sum() * 10)  # this batch wants v larger
    assert not opt2.last_step["fit"]["ok"] and opt2.phase == "approx"
    assert torch.equal(v.detach(), torch.tensor([1.0], dtype=torch.float64))
    opt2.step(lambda: ((v - 0.0) ** 2).sum())
    assert opt2.last_step["phase"] == "approx" and opt2.backwards == 2  # a new phase opened


def test_failed_fit_keeps_previous_estimate_and_zero_direction_costs_no_trial():
    A, w, cs = problem()
    opt = LABPAL([w], approx_batches=2, reuse_steps=2)
    for i in range(4):
        opt.step(closure_for(A, w, cs[i]))
    est = opt._ls["est_lr"]
    trials = opt.trials
    # a phase whose direction is zero: aborted without trials, previous estimate kept
    for _ in range(1):
        opt.step(lambda: (w * 0).sum())
    assert opt.last_step["fit"]["reason"] == "zero or non-finite direction"
    assert opt.trials == trials and opt._ls["est_lr"] == est and opt.phase == "train"


def test_measurement_calls_accept_both_closure_conventions():
    A, w, cs = problem()
    opt = LABPAL([w], approx_batches=3)
    opt.step(closure_for(A, w, cs[0]))

    def calls_backward():
        loss = 0.5 * (A * (w - cs[1]) ** 2).sum()
        loss.backward()
        return loss

    # a measuring call accepts a torch-style closure: its backward is skipped, .grad kept
    g = w.grad
    opt.step(calls_backward)
    assert opt.backwards == 1 and w.grad is g

    def zeroes_grad():
        w.grad = None
        return 0.5 * (A * (w - cs[1]) ** 2).sum()

    opt.step(zeroes_grad)
    assert w.grad is g
    assert opt.steps == 3
    with pytest.warns(RuntimeWarning, match="start loss is not finite"):
        opt.step(lambda: (w * math.nan).sum())
    assert opt.steps == 3 and opt.nonfinite_steps == 1


def test_momentum_line_direction():
    A, w, cs = problem()
    opt = LABPAL([w], approx_batches=1, reuse_steps=1, momentum=0.5)
    opt.step(closure_for(A, w, cs[0]))  # approx: momentum buffer = g0
    g0 = A * (w.detach() - cs[0])
    assert torch.equal(opt.state[w]["momentum_buffer"], g0)
    w1 = w.detach().clone()
    opt.step(closure_for(A, w, cs[1]))  # train: d = 0.5 g0 + g1
    d = 0.5 * g0 + A * (w1 - cs[1])
    assert torch.allclose(w1 - w.detach(), opt.param_groups[0]["lr"] * d)


def test_deepcopy_midphase_and_nsgd_trains_digits():
    from autostep.bench.tasks import digits_mlp

    pb = digits_mlp(0)
    opt = LABPAL(pb.model.parameters(), mode="nsgd", total_steps=120)
    before = pb.evaluate("train").loss
    for xb, yb in pb.batches(120, seed=0):
        opt.step(lambda: pb.loss_fn(pb.model, (xb, yb)))
    assert pb.evaluate("train").loss < 0.3 * before
    assert opt.estimates == 1 and opt.updates == 51 + 15 + 7  # k = 1, 2, 4
    model2, opt2 = copy.deepcopy((pb.model, opt))
    assert opt2._ls == opt._ls


@pytest.mark.parametrize("noise_factor, momentum", [(2.0, 0.0), (1.0, 0.5), (1.0, 0.0)])
def test_a_parameter_without_gradient_gets_no_state(noise_factor, momentum):
    # the class docstring: "Parameters whose grad is None are not moved and get no state"; the
    # window bookkeeping used to create an empty entry for them (and save it in state_dict)
    torch.manual_seed(0)
    w, unused = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    before = unused.detach().clone()
    opt = LABPAL([w, unused], noise_factor=noise_factor, approx_batches=2, reuse_steps=3,
                 momentum=momentum)
    for _ in range(12):
        opt.step(lambda: ((w - 1.0) ** 2).sum())
    assert opt.updates > 0
    assert unused not in opt.state and len(opt.state_dict()["state"]) == 1
    assert torch.equal(unused.detach(), before)


def test_sample_step_is_the_deprecated_name_of_measuring_step():
    _, w, _ = problem()
    with pytest.warns(DeprecationWarning, match="sample_step= is now called measuring_step="):
        opt = LABPAL([w], sample_step=0.05)
    assert opt.param_groups[0]["measuring_step"] == 0.05 and "sample_step" not in opt.param_groups[0]
    with pytest.raises(TypeError, match="both sample_step= and measuring_step="):
        LABPAL([w], sample_step=0.05, measuring_step=0.1)
    with pytest.warns(DeprecationWarning, match="'sample_step' is now called 'measuring_step'"):
        opt = LABPAL([{"params": [w], "sample_step": 0.05}])
    assert opt.param_groups[0]["measuring_step"] == 0.05 and "sample_step" not in opt.param_groups[0]


def test_update_length_and_checkpoints_with_the_older_names():
    A, w, cs = problem()
    opt = LABPAL([w], mode="nsgd", approx_batches=2, reuse_steps=4)
    for i in range(4):
        opt.step(closure_for(A, w, cs[i]))
    assert opt.update_length > 0 and opt.last_step["update_length"] == opt.update_length
    with pytest.warns(DeprecationWarning, match="step_size is now called update_length"):
        assert opt.step_size == opt.update_length
    # a checkpoint of the older version: sample_step in the groups, step_size in the state
    sd = copy.deepcopy(opt.state_dict())
    old = copy.deepcopy(sd)
    old["param_groups"][0]["sample_step"] = old["param_groups"][0].pop("measuring_step")
    ls = old["param_groups"][0]["autostep"]
    ls["step_size"] = ls.pop("update_length")
    runs = []
    for state in (sd, old):
        w2 = nn.Parameter(w.detach().clone())
        opt2 = LABPAL([w2], mode="nsgd", approx_batches=2, reuse_steps=4)
        opt2.load_state_dict(state)
        runs.append([float(opt2.step(closure_for(A, w2, cs[i]))) for i in range(4, 12)]
                    + w2.detach().tolist() + [opt2.update_length])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
@pytest.mark.parametrize("dtype,g", [(torch.float32, 2e-44), (torch.float16, 1.2e-7)])
def test_a_tiny_direction_norm_does_not_raise(mode, dtype, g):
    # NSGD's rate est_step / ||d|| exceeds the dtype's range when ||d|| is tiny (a denormal float32
    # gradient, or a float16 gradient norm below ~3e-5); the update scalar then overflowed the
    # dtype and the step raised "value cannot be converted to type float without overflow"
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10).to(dtype))
    opt = LABPAL([w], mode=mode)
    for _ in range(12):
        opt.step(lambda: ((w.float() - 1) ** 2).sum())
    assert opt._ls["phase"] == "train"
    before = w.detach().clone()
    opt.step(lambda: (w.float() * g).sum().to(dtype))
    assert torch.isfinite(w).all()
    moved = float((w.detach().double() - before.double()).norm())
    if mode == "nsgd" and dtype == torch.float32:
        # a step of the estimated length along the (denormal) gradient, as with ordinary norms
        assert moved == pytest.approx(opt._ls["est_step"], rel=1e-5)
    elif mode == "nsgd":
        # float16: the norm is taken in float32 (a float16 norm, 3.58e-7 for 3.77e-7, made the
        # step 5 % too long); what is left is float16 rounding of the moved weights
        assert moved == pytest.approx(opt._ls["est_step"], rel=3e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nsgd_step_length_in_16_bit_types_uses_float32_norms(dtype):
    # LABPAL&NSGD moves est_step along d / ||d||; with the norm rounded to 8 (bfloat16) or 11
    # (float16) bits the step was off by up to 2^-9 (bfloat16) or 5 % (float16 denormal norms)
    torch.manual_seed(0)
    target = torch.linspace(-1, 1, 64)
    w = nn.Parameter(torch.zeros(64, dtype=dtype))
    opt = LABPAL([w], mode="nsgd", approx_batches=2, reuse_steps=50)
    lengths = []
    for _ in range(8):
        before = w.detach().double().clone()
        opt.step(lambda: ((w.float() - target) ** 2).sum().mul(3e-6).to(dtype))
        if opt.last_step.get("updated"):
            d = w.grad.double()
            expect = (before - opt.param_groups[0]["lr"] * d)  # the exact NSGD point
            lengths.append((float((expect - before).norm()), opt.update_length))
    assert lengths
    for length, est in lengths:
        assert length == pytest.approx(est, rel=1e-5)


def test_an_update_without_any_gradient_of_its_parameters_does_not_raise():
    # the loss of some batches does not reach the optimizer's parameters (an expert used now and
    # then; another optimizer's parameters carry the graph): the NSGD norm read stacked an empty
    # list ("Tensor list must have at least one tensor")
    torch.manual_seed(0)
    w, v = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
    opt = LABPAL([w], mode="nsgd", approx_batches=1, reuse_steps=100)
    for i in range(6):
        use_w = i < 3 or i % 2 == 0
        before = w.detach().clone()
        opt.step(lambda: ((v - 1) ** 2).sum() + (((w - 2) ** 2).sum() if use_w else 0.0))
        if not use_w:
            assert torch.equal(w, before)
    assert opt.updates >= 4
