"""Standard options on every line-search optimizer: decoupled ``weight_decay`` and ``max_grad_norm``
(issue 10 item 3)."""

import copy
import warnings

import pytest
import torch
from torch import nn

import autostep
from autostep.optim.labpal import LABPAL
from autostep.optim.pal import PAL

ONE_STEP = {
    "SLS": autostep.SLS, "AdamSLS": autostep.AdamSLS, "SALSA": autostep.SALSA,
    "ALSALS": autostep.ALSALS, "PLASLS": autostep.PLASLS, "PAL": PAL,
}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _closure(model, x, y):
    return lambda: nn.functional.mse_loss(model(x), y)


X = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))  # not the global RNG: its state at import depends on test order


@pytest.mark.parametrize("name", sorted(ONE_STEP))
def test_weight_decay_is_decoupled_and_outside_the_search(name):
    m0, m1 = _model(), _model()
    w0 = [p.detach().clone() for p in m0.parameters()]
    o0 = ONE_STEP[name](m0.parameters())
    o1 = ONE_STEP[name](m1.parameters(), weight_decay=0.1)
    for _ in range(2):  # the second step starts from decayed weights: compare step by step
        m1.load_state_dict(m0.state_dict())
        w0 = [p.detach().clone() for p in m0.parameters()]
        st = copy.deepcopy(o0.state_dict())
        st["param_groups"][0]["weight_decay"] = 0.1
        o1.load_state_dict(st)
        o0.step(_closure(m0, X, Y))
        o1.step(_closure(m1, X, Y))
        g0 = o0.param_groups[0]
        lr = g0["lr"]
        assert lr > 0 and o1.param_groups[0]["lr"] == lr  # same search: decay is not in the test
        # each parameter decays with its own step size: PLASLS's layer's (group lr is their
        # geometric mean), the group's for the others
        lrs = [lr] * len(w0)
        for li, idx in enumerate(g0.get("layers") or []):
            for i in idx:
                lrs[i] = g0["layer_lrs"][li]
        assert o1.param_groups[0].get("layer_lrs") == g0.get("layer_lrs")
        for a, b, w, e in zip(m0.parameters(), m1.parameters(), w0, lrs):
            assert torch.allclose(b, a - e * 0.1 * w, atol=1e-6)


def test_weight_decay_key_in_a_group_is_used():
    m0, m1 = _model(), _model()
    o0 = autostep.SALSA(m0.parameters(), weight_decay=0.05)
    o1 = autostep.SALSA([{"params": list(m1.parameters()), "weight_decay": 0.05}])
    for _ in range(3):
        o0.step(_closure(m0, X, Y))
        o1.step(_closure(m1, X, Y))
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    m2 = _model()
    o2 = autostep.SALSA(m2.parameters())
    for _ in range(3):
        o2.step(_closure(m2, X, Y))
    assert not all(torch.equal(a, b) for a, b in zip(m0.parameters(), m2.parameters()))


def test_labpal_weight_decay():
    m0, m1 = _model(), _model()
    o0 = LABPAL(m0.parameters(), approx_batches=1, reuse_steps=5)
    o1 = LABPAL(m1.parameters(), approx_batches=1, reuse_steps=5, weight_decay=0.2)
    o0.step(_closure(m0, X, Y))
    o1.step(_closure(m1, X, Y))  # approximation call: no update
    w0 = [p.detach().clone() for p in m1.parameters()]
    o1.step(_closure(m1, X, Y))
    lr = o1.param_groups[0]["lr"]
    assert lr > 0
    for p, w in zip(m1.parameters(), w0):
        assert torch.allclose(p, w * (1 - lr * 0.2) - lr * p.grad, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [(LABPAL, {"mode": "nsgd", "approx_batches": 1}),
                                    (autostep.PAL, {}), (autostep.SLS, {"lr": 10.0, "max_lr": 1e3})])
def test_a_decay_that_flips_the_weights_warns_once_with_the_numbers(cls, kw):
    # the step sizes of the searches along the raw gradient are SGD-scale and grow as the gradient
    # shrinks: AdamW's weight_decay=0.1 reached lr * weight_decay > 1 within 16-25 steps on the
    # digits MLP (weights flipped, loss back at chance) and nothing said why
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(10))
    opt = cls([w], weight_decay=0.5, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            opt.step(lambda: 1e-3 * ((w - 2.0) ** 2).sum())
    flips = [c for c in caught if "zeroes or flips" in str(c.message)]
    assert len(flips) == 1, [str(c.message) for c in caught]
    msg = str(flips[0].message)
    assert "weight_decay = 0.5" in msg and "SGD-scale" in msg
    assert flips[0].filename == __file__  # points at the caller's step(), not at autostep


@pytest.mark.parametrize("cls,kw", [(LABPAL, {"mode": "nsgd", "approx_batches": 1}),
                                    (autostep.PAL, {}), (autostep.SLS, {"lr": 10.0, "max_lr": 1e3}),
                                    (autostep.SALSA, {"direction": "sgd", "amortize": 3, "lr": 10.0,
                                                      "max_lr": 1e3})])
def test_the_decay_warning_as_an_error_changes_nothing(cls, kw):
    # warned while decaying the segments one by one, the first group was already scaled when
    # -W error turned the warning into an exception (LABPAL and reused steps keep no w0)
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.ones(10)), nn.Parameter(torch.ones(10))
    opt = cls([{"params": [a], "weight_decay": 1e-3}, {"params": [b], "weight_decay": 0.5}], **kw)
    raised = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(20):
            pa, pb, sd = a.detach().clone(), b.detach().clone(), copy.deepcopy(opt.state_dict())
            try:
                opt.step(lambda: 1e-3 * ((a - 2.0) ** 2).sum() + 1e-3 * ((b - 2.0) ** 2).sum())
            except RuntimeWarning as e:
                assert "zeroes or flips" in str(e)
                raised += 1
                assert torch.equal(pa, a) and torch.equal(pb, b)
                assert repr(opt.state_dict()) == repr(sd)
    assert raised == 1


def test_step_warnings_point_at_the_callers_line():
    # a hard-coded stacklevel pointed into torch's optimizer wrapper (torch/optim/optimizer.py)
    w = nn.Parameter(torch.ones(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autostep.SALSA([w]).step(lambda: (w * float("nan")).sum())  # skipped: non-finite loss
        autostep.PAL([w], 0.1)  # lr has no effect
        LABPAL([w]).step(lambda: (w * float("nan")).sum())
    mine = [c for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(mine) == 3, [str(c.message) for c in caught]
    assert all(c.filename == __file__ for c in mine), [(c.filename, c.lineno) for c in mine]


@pytest.mark.parametrize("cls,kw", [(LABPAL, {"mode": "nsgd", "approx_batches": 1}),
                                    (autostep.PAL, {})])
def test_an_ordinary_decay_does_not_warn(cls, kw):
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(10))
    opt = cls([w], weight_decay=1e-4, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            opt.step(lambda: ((w - 2.0) ** 2).sum())
    assert not [c for c in caught if "zeroes or flips" in str(c.message)]


@pytest.mark.parametrize("name", sorted(ONE_STEP))
def test_max_grad_norm_must_be_the_same_in_every_group(name):
    # a negative weight_decay or a max_grad_norm <= 0 alone: error inputs of the optimizer table
    # (tests/optimizer_infos.py), refused by test_conformance.py::test_bad_hyper_parameters_raise
    ps = list(_model().parameters())
    with pytest.raises(ValueError, match="max_grad_norm must be the same"):
        ONE_STEP[name]([{"params": ps[:2], "max_grad_norm": 1.0}, {"params": ps[2:]}],
                       max_grad_norm=2.0)


def test_max_grad_norm_clips_the_direction_and_keeps_grad():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10) * 5)
    opt = autostep.SLS([w], lr=1.0, max_grad_norm=0.5)
    w0 = w.detach().clone()
    opt.step(lambda: 0.5 * (w ** 2).sum())
    g = w0.clone()  # gradient of 0.5 ||w||^2 at w0
    assert torch.equal(w.grad, g)  # .grad itself is not clipped
    eta = opt.param_groups[0]["lr"]
    step = w0 - w.detach()
    assert torch.allclose(step, eta * 0.5 * g / g.norm(), atol=1e-5)
    assert opt.last_step["clip"] == pytest.approx(0.5 / float(g.norm()), rel=1e-5)
    # the Armijo test uses the slope of the true gradient along the clipped direction:
    # f(w0) - f(w) >= c * eta * <g, d> with d = clip * g
    dec = float(0.5 * (w0 ** 2).sum() - 0.5 * (w.detach() ** 2).sum())
    assert dec >= 0.1 * eta * 0.5 * float(g.norm()) - 1e-6


@pytest.mark.parametrize("name", sorted(ONE_STEP))
def test_max_grad_norm_large_changes_nothing_small_changes_the_step(name):
    runs = {}
    for mx in (None, 1e9, 1e-3):
        m = _model()
        o = ONE_STEP[name](m.parameters(), max_grad_norm=mx)
        for _ in range(3):
            o.step(_closure(m, X, Y))
        runs[mx] = [p.detach().clone() for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(runs[None], runs[1e9]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[None], runs[1e-3]))


@pytest.mark.parametrize("cls", [PAL, LABPAL])
def test_pal_labpal_warn_when_a_scheduler_writes_lr_or_momentum(cls):
    m = _model()
    opt = cls(m.parameters())
    opt.step(_closure(m, X, Y))
    opt.param_groups[0]["lr"] = 0.123  # what a scheduler does
    with pytest.warns(RuntimeWarning, match="lr is a read-out"):
        opt.step(_closure(m, X, Y))
    opt.param_groups[0]["momentum"] = 0.9
    with pytest.warns(RuntimeWarning, match="cycle_momentum"):
        opt.step(_closure(m, X, Y))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(_closure(m, X, Y))  # the optimizer's own writes do not warn


ALL_CLASSES = [autostep.SLS, autostep.AdamSLS, autostep.SALSA, autostep.ALSALS, autostep.PLASLS,
               PAL, LABPAL]
#: torch.optim's order of the arguments it shares with ours
TORCH_ORDER = ["betas", "eps", "momentum", "weight_decay", "max_grad_norm"]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_constructors_follow_torch_optim(cls):
    # params and lr positional, everything else keyword-only, torch's arguments first, in its order
    import inspect

    ps = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in ps[:2]] == ["params", "lr"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in ps[:2])
    rest = [p for p in ps[2:] if p.name not in ("sample_step",)]  # deprecated names ride along
    assert all(p.kind is p.KEYWORD_ONLY for p in rest)
    names = [p.name for p in rest]
    shared = [n for n in names if n in TORCH_ORDER]
    assert shared == sorted(shared, key=TORCH_ORDER.index)
    assert names[:len(shared)] == shared  # then the method's own
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError):
        cls([w], 0.1, 0.5)  # a third positional argument


def test_adamsls_and_plasls_share_one_constructor():
    from autostep.optim._adam_direction import AdamArmijo

    assert "__init__" not in vars(autostep.AdamSLS) and "__init__" not in vars(autostep.PLASLS)
    assert issubclass(autostep.AdamSLS, AdamArmijo) and issubclass(autostep.PLASLS, AdamArmijo)


def test_closure_need_is_one_class_attribute_read_by_the_registry_and_the_hf_integration():
    from autostep import registry
    from autostep._closure import needs_closure
    from autostep.integrations.hf import _autostep_optimizer

    for cls in ALL_CLASSES:
        assert cls.step_requires_closure is True and needs_closure(cls)
    for cls in (torch.optim.Adam, torch.optim.SGD, autostep.Autostep, autostep.AutoLR):
        assert not needs_closure(cls)
    w = nn.Parameter(torch.zeros(2))
    for name in registry.list_methods(family="autostep", kind="closure"):
        assert needs_closure(registry.create(name, [w])), name
    assert registry.get("SLS").needs_closure and not registry.get("Autostep").needs_closure

    class Wrapper:  # what accelerate's AcceleratedOptimizer looks like from outside
        def __init__(self, optimizer):
            self.optimizer = optimizer

    sls = autostep.SLS([w])
    assert _autostep_optimizer(Wrapper(sls)) is sls
    assert _autostep_optimizer(Wrapper(torch.optim.SGD([w], lr=0.1))) is None


@pytest.mark.parametrize("cls", [PAL, LABPAL])
def test_pal_labpal_warn_when_constructed_with_an_lr(cls):
    # lr is their read-out: PAL(params, 0.1), as one writes SGD(params, 0.1), sets no rate
    w = nn.Parameter(torch.zeros(2))
    with pytest.warns(RuntimeWarning, match="lr=0.1 has no effect"):
        opt = cls([w], 0.1)
    assert opt.param_groups[0]["lr"] == 0.1  # shown until the first step, as documented
    with pytest.warns(RuntimeWarning, match="lr=0.2 has no effect"):
        cls([{"params": [w], "lr": 0.2}])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = cls([w])
        opt.load_state_dict(opt.state_dict())
