"""Faults and bad input (issue 11, items 1-5, 9, 10) against every autostep optimizer.

Every case either raises a clear error *before anything changed* -- parameters, ``.grad``,
``state_dict()``, module buffers, the random generators -- or is handled correctly (a non-finite
step is skipped and counted).  The optimizer table (tests/optimizer_infos.py, its ``FAULTS``
inputs) drives every test; ``FAULTS`` here lists the injected faults and bad inputs by name
(``test_fault_table_is_large_enough`` counts them).

The uninterrupted reference runs depend only on the case name and the step count (``fresh`` seeds
every generator), so they are computed once per (name, steps) and kept as copies (``reference``),
not re-trained by every test that compares against them.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import autostep
from autostep._closure.grads import OWN_GRADS, foreign_grads
from optimizer_infos import CASES, FAULTS, names, without_keys

# every optimizer, and the variants whose state or step differ: the table's FAULTS inputs
NAMES = names(FAULTS)

FAULTS: list[str] = []  # names of the injected faults / bad inputs below (>= 40 asked)


def fault(*names):
    FAULTS.extend(names)
    return list(names)


# ---------------------------------------------------------------------------------------------
# a small problem with dropout and BatchNorm (random numbers and buffers must be restored too)
def seed_cpu(n):
    """Seed the CPU generator, the only one these tests use.  (``torch.manual_seed`` also queues a
    seed with a formatted stack trace for each accelerator backend: ~1 ms per call at pytest's
    stack depth, and these tests seed thousands of times.)"""
    torch.default_generator.manual_seed(n)


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    return x, y


X, Y = data()


def model_for(seed=0):
    seed_cpu(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Dropout(0.2),
                         nn.Linear(12, 3))


def batch(t):
    idx = torch.arange(16) + (16 * t) % 48
    return X[idx], Y[idx]


def closure_for(model, t, fail_at=None, exc=KeyboardInterrupt):
    """The loss of batch ``t``; with ``fail_at=j`` the ``j``-th call (1 = the first) raises."""
    xb, yb = batch(t)
    calls = [0]

    def closure():
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            # fail after the forward ran: buffers and generators have moved
            out = nn.functional.cross_entropy(model(xb), yb)
            raise exc("injected fault")
        return nn.functional.cross_entropy(model(xb), yb)

    closure.calls = calls
    return closure


def fresh(name, seed=0):
    seed_cpu(1234)
    model = model_for(seed)
    opt = CASES[name](model.parameters())
    seed_cpu(99)
    return model, opt


def run(model, opt, ts):
    for t in ts:
        opt.step(closure_for(model, t))


def sd_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _own_grads(model, opt) -> bool:
    """Whether ``.grad`` holds the gradients the optimizer's previous step left (its own
    backward's or a torch-style closure's), unchanged since: a step releases those before its
    forward (as ``zero_grad(set_to_none=True)`` would; one gradient of memory), so a failed step
    leaves ``.grad`` None there."""
    params = list(model.parameters())
    return (bool(getattr(opt, OWN_GRADS, None)) and any(p.grad is not None for p in params)
            and not foreign_grads(opt, params))


def snapshot(model, opt):
    """Everything a failed step must leave as it was."""
    return {
        "own": _own_grads(model, opt),
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": sd_bytes(opt.state_dict()),
        "groups": copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                                 for g in opt.param_groups]),
        "rng": torch.get_rng_state(),
        "counters": (opt.forwards, opt.backwards, opt.trials, opt.steps),
    }


def assert_unchanged(before, model, opt):
    after = snapshot(model, opt)
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b), "parameters changed"
    if before["own"]:  # released before the forward (see _own_grads), or never reached
        for a, b, va in zip(before["grads"], after["grads"], before["grad_values"]):
            assert b is None or (a is b and torch.equal(va, b)), ".grad changed"
    else:
        for a, b in zip(before["grads"], after["grads"]):
            assert a is b, ".grad object changed"
        for a, b in zip(before["grad_values"], after["grad_values"]):
            assert (a is None and b is None) or torch.equal(a, b), ".grad values changed"
    for k, v in before["buffers"].items():
        assert torch.equal(v, after["buffers"][k]), f"module buffer {k} changed"
    assert _nan_equal(before["groups"], after["groups"]), "param groups changed"
    assert before["opt"] == after["opt"], "state_dict() changed"
    assert torch.equal(before["rng"], after["rng"]), "random generator state changed"
    assert before["counters"] == after["counters"]


def _nan_equal(a, b):
    return repr(a) == repr(b)


def fingerprint(model, opt):
    """What two runs must agree on, as copies: parameters, module state, optimizer state bytes."""
    return ([p.detach().clone() for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()}, sd_bytes(opt.state_dict()))


@functools.lru_cache(maxsize=None)
def reference(name, steps):
    """The fingerprint of ``steps`` uninterrupted steps of case ``name`` from ``fresh(name)``."""
    model, opt = fresh(name)
    run(model, opt, range(steps))
    return fingerprint(model, opt)


def assert_same_run(ref, model, opt):
    """``model``/``opt`` are where the run fingerprinted in ``ref`` ended."""
    params, buffers, opt_bytes = ref
    for p, q in zip(params, model.parameters()):
        assert torch.equal(p, q)
    assert list(buffers) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(buffers[k], v), k
    assert opt_bytes == sd_bytes(opt.state_dict())


# =============================================================================================
# item 3: a step that raises leaves everything as it was; interrupt-then-retry == uninterrupted
INTERRUPTS = fault(
    "KeyboardInterrupt in the first evaluation",
    "KeyboardInterrupt in the first trial",
    "KeyboardInterrupt in a later trial",
    "RuntimeError in a trial",
    "ValueError in the first evaluation",
    "KeyboardInterrupt inside backward (tensor hook)",
    "zero_grad() inside the closure on the first step",
    "backward() inside the closure on a trial",
    "torch-style closure with accumulated gradients, interrupted in a trial",
)


@functools.lru_cache(maxsize=None)
def _calls_per_step(name, steps):
    """How many closure calls each of the first ``steps`` steps of an uninterrupted run makes."""
    model, opt = fresh(name)
    out = []
    for t in range(steps):
        c = closure_for(model, t)
        opt.step(c)
        out.append(c.calls[0])
    return tuple(out)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_interrupt_then_retry_equals_uninterrupted(name, data):
    steps = 7
    calls = _calls_per_step(name, steps)
    t = data.draw(st.integers(0, steps - 1), label="interrupted step")
    j = data.draw(st.integers(1, calls[t]), label="failing closure call")
    exc = data.draw(st.sampled_from([KeyboardInterrupt, RuntimeError]), label="exception")

    model, opt = fresh(name)
    run(model, opt, range(t))
    before = snapshot(model, opt)
    with pytest.raises(exc, match="injected fault"):
        opt.step(closure_for(model, t, fail_at=j, exc=exc))
    assert_unchanged(before, model, opt)
    run(model, opt, range(t, steps))  # retry the step, then continue
    assert_same_run(reference(name, steps), model, opt)


@pytest.mark.parametrize("name", NAMES)
def test_interrupt_inside_backward_changes_nothing(name):
    model, opt = fresh(name)
    run(model, opt, range(2))
    before = snapshot(model, opt)
    w = next(model.parameters())

    def boom(grad):
        raise KeyboardInterrupt("injected fault in backward")

    h = w.register_hook(boom)
    try:
        with pytest.raises(KeyboardInterrupt, match="injected fault"):
            opt.step(closure_for(model, 2))
    finally:
        h.remove()
    assert_unchanged(before, model, opt)
    run(model, opt, range(2, 4))
    assert_same_run(reference(name, 4), model, opt)


@pytest.mark.parametrize("name", NAMES)
def test_first_step_with_zero_grad_in_closure(name):
    """A torch-style ``zero_grad()`` in the closure must either work or change nothing."""
    model, opt = fresh(name)
    xb, yb = batch(0)

    def closure():
        opt.zero_grad()
        return nn.functional.cross_entropy(model(xb), yb)

    before = snapshot(model, opt)
    try:
        opt.step(closure)
    except autostep.ClosureError:
        assert_unchanged(before, model, opt)
        run(model, opt, range(3))
        assert_same_run(reference(name, 3), model, opt)


@pytest.mark.parametrize("name", NAMES)
def test_backward_in_closure_trial_changes_nothing(name):
    model, opt = fresh(name)
    run(model, opt, range(3))
    xb, yb = batch(3)
    calls = [0]

    def closure():
        calls[0] += 1
        loss = nn.functional.cross_entropy(model(xb), yb)
        if calls[0] > 1 and torch.is_grad_enabled():
            loss.backward()
        return loss

    before = snapshot(model, opt)
    try:
        opt.step(closure)
    except (autostep.ClosureError, RuntimeError):
        assert_unchanged(before, model, opt)


@pytest.mark.parametrize("name", NAMES)
def test_torch_style_closure_with_accumulated_grads_interrupted_in_a_trial(name):
    """A torch-style closure adds to gradients accumulated before the step; a trial that raises
    must put the accumulated values (not the sum) back."""
    model, opt = fresh(name)
    run(model, opt, range(2))
    xa, ya = batch(5)
    nn.functional.cross_entropy(model(xa), ya).backward()  # accumulated before the step
    before = snapshot(model, opt)
    xb, yb = batch(2)
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt("injected fault")
        loss = nn.functional.cross_entropy(model(xb), yb)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    try:
        opt.step(closure)
    except KeyboardInterrupt:
        assert_unchanged(before, model, opt)
    else:
        assert calls[0] == 1  # a call without trial (LABPAL's phases): nothing to interrupt


# =============================================================================================
# item 1: a non-finite gradient or start loss is skipped before anything changes
class _Inject(torch.autograd.Function):
    """Identity in the forward; the backward puts ``value`` at ``index`` of the gradient."""

    @staticmethod
    def forward(ctx, x, index, value):
        ctx.index, ctx.value = index, value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g.view(-1)[ctx.index] = ctx.value
        return g, None, None


NONFINITE = fault(
    "NaN gradient entry", "+inf gradient entry", "-inf gradient entry",
    "NaN start loss", "+inf start loss", "-inf start loss",
    "inf gradient from a finite loss via sqrt(0) (the issue's reproduction)",
)


def _nonfinite_closure(model, t, kind, where, value):
    xb, yb = batch(t)
    params = list(model.parameters())

    def closure():
        loss = nn.functional.cross_entropy(model(xb), yb)
        if kind == "loss":
            return loss * value if math.isnan(value) else loss + value
        p = params[where % len(params)]
        if kind == "sqrt":
            q = p.view(-1)[0]
            return loss + torch.sqrt(q - q.detach())
        return loss + (_Inject.apply(p, where % p.numel(), value) * 0).sum()

    return closure


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=5, deadline=None)
@given(kind=st.sampled_from(["grad", "loss", "sqrt"]),
       value=st.sampled_from([math.nan, math.inf, -math.inf]),
       where=st.integers(0, 40), t=st.integers(0, 5))
def test_nonfinite_step_is_skipped_and_changes_nothing(name, kind, value, where, t):
    model, opt = fresh(name)
    run(model, opt, range(t))
    if kind != "loss":
        # LABPAL's measuring calls evaluate without a backward: no gradient to corrupt there
        m2, o2 = copy.deepcopy((model, opt))
        o2.step(closure_for(m2, t))
        assume(o2.last_step["backwards"] == 1)
    before = snapshot(model, opt)
    skipped = opt.skipped_steps
    with pytest.warns(RuntimeWarning, match="not finite.*skipped"):
        loss = opt.step(_nonfinite_closure(model, t, kind, where, value))
    if kind == "loss":
        assert not math.isfinite(float(loss))
    assert opt.skipped_steps == skipped + 1 and opt.nonfinite_steps == 1
    assert opt.last_step["skipped"].startswith("non-finite")
    for a, p in zip(before["params"], model.parameters()):
        assert torch.equal(a, p)
    counters = ("skipped", "nonfinite", "forwards", "backwards")
    assert without_keys(torch.load(io.BytesIO(before["opt"]), weights_only=False), counters).__repr__() \
        == without_keys(opt.state_dict(), counters).__repr__()
    # the rest of the run is the run that never saw the bad batch (generators put back as they
    # were after the skipped call's forward: re-seed both identically)
    seed_cpu(7)
    run(model, opt, range(t, t + 3))
    for p, q in zip(model.parameters(), _reseeded_reference(name, t)):
        assert torch.equal(p, q)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def _reseeded_reference(name, t):
    """Parameters after ``t`` steps, a re-seed with 7, and steps ``t .. t+2`` (no bad batch)."""
    seed_cpu(7)
    model, opt = fresh(name)
    run(model, opt, range(t))
    seed_cpu(7)
    run(model, opt, range(t, t + 3))
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_gradscaler_style_inf_gradients_are_harmless(name):
    """Every other step has an inf gradient (as fp16 overflow gives): the run equals the run that
    only saw the finite steps, and nothing becomes NaN."""
    model, opt = fresh(name)
    m_ref, o_ref = fresh(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        skips = 0
        for t in range(8):
            seed_cpu(t)
            opt.step(_nonfinite_closure(model, t, "grad", t, math.inf))
            if opt.last_step.get("skipped") == "non-finite gradient":
                skips += 1
            else:  # LABPAL's measuring calls run no backward: a normal call, mirrored
                seed_cpu(t)
                o_ref.step(closure_for(m_ref, t))
            seed_cpu(100 + t)
            opt.step(closure_for(model, t))
            seed_cpu(100 + t)
            o_ref.step(closure_for(m_ref, t))
    assert opt.nonfinite_steps == skips >= 4
    for p, q in zip(model.parameters(), m_ref.parameters()):
        assert torch.equal(p, q)
        assert torch.isfinite(p).all()
    for group in opt.param_groups:
        assert math.isfinite(group["lr"])


# =============================================================================================
# item 2: a NaN/inf/non-positive lr is refused at the next step (and at load, below)
BAD_LRS = fault("lr = nan", "lr = inf", "lr = -inf", "lr = -1", "lr = -1e-300",
                "lr = 'fast' (a string)", "lr = None", "lr = True", "lr = a 2-element tensor")
_BAD_LR_VALUES = [math.nan, math.inf, -math.inf, -1.0, -1e-300, "fast", None, True,
                  torch.tensor([0.1, 0.2])]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", _BAD_LR_VALUES, ids=BAD_LRS)
def test_bad_lr_is_refused_at_the_next_step(name, value):
    model, opt = fresh(name)
    run(model, opt, range(2))
    good = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = value
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\].*finite number"):
        opt.step(closure_for(model, 2))
    assert_unchanged(before, model, opt)
    opt.param_groups[0]["lr"] = good
    run(model, opt, range(2, 4))
    assert_same_run(reference(name, 4), model, opt)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:Detected call of")
def test_nan_lr_from_a_scheduler_is_refused(name):
    model, opt = fresh(name)
    run(model, opt, range(1))
    opt.param_groups[0]["lr"] = 0.1  # PAL/LABPAL: a read-out (0 after a skip); give it a value
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: math.nan if k >= 1 else 1.0)
    sched.step()
    assert math.isnan(opt.param_groups[0]["lr"])
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="LR scheduler"):
        opt.step(closure_for(model, 1))
    assert_unchanged(before, model, opt)


# =============================================================================================
# item 4: load_state_dict validates before it changes anything
@functools.lru_cache(maxsize=None)
def _saved_bytes(name, steps, seed):
    model, opt = fresh(name, seed)
    run(model, opt, range(steps))
    return sd_bytes(opt.state_dict())


def _saved(name, steps=3, seed=0):
    """A fresh copy of the state dict after ``steps`` steps of case ``name``."""
    return torch.load(io.BytesIO(_saved_bytes(name, steps, seed)), weights_only=False)


def _first_state_tensor(sd):
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return pid, key
    return None


def _corrupt_shape(sd):
    found = _first_state_tensor(sd)
    if found is None:
        return None
    pid, key = found
    sd["state"][pid][key] = torch.zeros(7, 5)
    return sd


def _set_group(key, value):
    def f(sd):
        sd["param_groups"][0][key] = value
        return sd
    return f


def _drop_group_key(key):
    def f(sd):
        del sd["param_groups"][0][key]
        return sd
    return f


def _other_class(other):
    def f(sd, name):
        return _saved(other)
    return f


def _torch_adam(name):
    model = model_for()
    adam = torch.optim.Adam(model.parameters())
    xb, yb = batch(0)
    nn.functional.cross_entropy(model(xb), yb).backward()
    adam.step()
    return adam.state_dict()


def _extra_state_key(sd):
    pid = next(iter(sd["state"]), 0)
    sd["state"].setdefault(pid, {})["momentum"] = torch.zeros(())
    return sd


def _unknown_param_id(sd):
    sd["state"][999] = {}
    return sd


def _few_params(sd):
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    return sd


def _two_groups(sd):
    g = dict(sd["param_groups"][0])
    g["params"] = []
    sd["param_groups"].append(g)
    return sd


def _bad_layer_lr(sd):
    g = sd["param_groups"][0]
    if not g.get("layer_lrs"):
        return None
    g["layer_lrs"] = [math.nan] + list(g["layer_lrs"][1:])
    return sd


def _bad_layers(sd):
    g = sd["param_groups"][0]
    if not g.get("layers"):
        return None
    g["layers"] = [list(idx) for idx in g["layers"]]
    g["layers"][0] = g["layers"][0] + [99]
    return sd


def _nan_step_size(sd):
    g = sd["param_groups"][0]
    if "step_size" not in g or "c" not in g:
        return None
    g["step_size"] = math.nan
    return sd


def _no_key(key):
    def f(sd):
        del sd[key]
        return sd
    return f


# (description, corruption(sd) -> bad sd, or (sd, name) -> bad sd for whole replacements; pattern)
BAD_LOADS = {
    "state dict of SLS": (_other_class("SLS"), "SLS|lacks|does not belong"),
    "state dict of PAL": (_other_class("PAL"), "PAL|lacks|does not belong"),
    "state dict of LABPAL": (_other_class("LABPAL-sgd-short"), "LABPAL|lacks|does not belong"),
    "state dict of AdamSLS": (_other_class("AdamSLS"), "AdamSLS|lacks|does not belong"),
    "state dict of torch.optim.Adam": (lambda sd, name: _torch_adam(name),
                                       "not saved by an autostep optimizer"),
    "group without 'lr'": (_drop_group_key("lr"), "lacks.*'lr'"),
    "group with lr = nan": (_set_group("lr", math.nan), "lr"),
    "group with lr = -1": (_set_group("lr", -1.0), "lr"),
    "group with a non-numeric hyper-parameter": (None, "must be"),
    "state tensor of the wrong shape": (_corrupt_shape, "shape"),
    "unknown per-parameter state key": (_extra_state_key, "does not keep"),
    "state of a parameter no group lists": (_unknown_param_id, "no param group lists"),
    "group with fewer parameters": (_few_params, "parameters"),
    "an extra param group": (_two_groups, "param groups"),
    "no 'state' entry": (_no_key("state"), "'state'"),
    "no 'param_groups' entry": (_no_key("param_groups"), "'param_groups'"),
    "not a dict": (lambda sd, name: [1, 2, 3], "dict"),
    "PLASLS layer step size NaN": (_bad_layer_lr, "layer_lrs"),
    "PLASLS layers naming a parameter the group lacks": (_bad_layers, "layers"),
    "Armijo step_size NaN": (_nan_step_size, "step_size"),
}
fault(*BAD_LOADS)


def _applies(case, name):
    """Whether the corruption ``case`` exists for case ``name`` (by the table's flags)."""
    info = CASES[name].info
    if case.startswith("state dict of ") and case[len("state dict of "):] == info.name:
        return False  # the same class: not a foreign state dict
    if case.startswith("PLASLS "):
        return info.is_per_layer
    if case.startswith("Armijo "):
        return info.is_armijo
    return True


LOAD_CASES = [(name, case) for name in NAMES for case in sorted(BAD_LOADS) if _applies(case, name)]


def _hyper_key(opt):
    for key in ("c", "measuring_step"):
        if key in opt.defaults:
            return key
    raise AssertionError


@pytest.mark.parametrize("name, case", LOAD_CASES, ids=[f"{c}-{n}" for n, c in LOAD_CASES])
def test_load_state_dict_refuses_and_changes_nothing(name, case):
    corrupt, pattern = BAD_LOADS[case]
    model, opt = fresh(name)
    run(model, opt, range(3))
    sd = copy.deepcopy(opt.state_dict())
    with torch.random.fork_rng():  # building another optimizer's state must not move our RNG
        if corrupt is None:
            sd["param_groups"][0][_hyper_key(opt)] = "fast"
            bad = sd
        elif corrupt.__code__.co_argcount == 2:
            bad = corrupt(sd, name)
        else:
            bad = corrupt(sd)
    if bad is None:  # a state tensor of the wrong shape: SLS, SALSA-sgd and PAL keep none
        pytest.skip("nothing of that kind in this optimizer's state dict")
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=pattern) as info:
        opt.load_state_dict(bad)
    assert "unchanged" in str(info.value) or "Nothing was loaded" in str(info.value)
    assert_unchanged(before, model, opt)
    run(model, opt, range(3, 5))
    assert_same_run(reference(name, 5), model, opt)


@pytest.mark.parametrize("name", NAMES)
def test_good_state_dict_still_loads(name):
    sd = _saved(name, steps=4)
    model, opt = fresh(name)
    opt.load_state_dict(sd)
    assert sd_bytes(opt.state_dict()) == sd_bytes(sd)


def test_adamsls_state_is_refused_by_plasls():
    """Same hyper-parameter names, different algorithm: the class marker tells them apart."""
    sd = _saved("AdamSLS")
    model, opt = fresh("PLASLS")
    with pytest.raises(ValueError, match="saved by AdamSLS, not by PLASLS"):
        opt.load_state_dict(sd)


# =============================================================================================
# items 5 and 10: complex parameters and a parameter listed twice are refused at construction
fault("complex parameter", "complex parameter added with add_param_group",
      "parameter listed twice in one group", "parameter listed twice via add_param_group",
      "parameter in two groups", "add_param_group with an invalid hyper-parameter")


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_are_refused(name):
    z = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex parameters.*view_as_real"):
        CASES[name]([z])
    model, opt = fresh(name)
    n = len(opt.param_groups)
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [z]})
    assert len(opt.param_groups) == n  # the refused group is not kept


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_parameters_are_refused(name):
    w = nn.Parameter(torch.randn(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our error, not torch's generic warning
        with pytest.raises(ValueError, match="same parameter.*twice"):
            CASES[name]([w, w])
    model, opt = fresh(name)
    p0 = next(model.parameters())
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p0]})
    v = nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match="twice"):
        opt.add_param_group({"params": [v, v]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [v], "lr": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [v]})
    assert len(opt.param_groups) == 2


# =============================================================================================
# item 9: extreme loss scales either work (scale-safe norms and dots) or say why nothing moves
SCALES = fault("loss x 1e30", "loss x 1e20", "loss x 1e-20", "loss x 1e-30")


def _scaled_run(name, exponent, steps=12, seed=0):
    seed_cpu(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = CASES[name](model.parameters())
    scale = 10.0 ** exponent
    full = lambda: float(nn.functional.cross_entropy(model(X), Y))
    l0 = full()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(steps):
            xb, yb = batch(t)
            opt.step(lambda: nn.functional.cross_entropy(model(xb), yb) * scale)
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
             and "moved nothing" in str(w.message)]
    return model, l0, full(), notes, opt


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None)
@given(exponent=st.sampled_from([-30, -25, -20, -15, -10, 0, 10, 15, 20, 25, 30]),
       seed=st.integers(0, 3))
def test_extreme_loss_scales_move_or_warn(name, exponent, seed):
    model, l0, l1, notes, _ = _scaled_run(name, exponent, seed=seed)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = abs(l1 - l0) > 1e-4 * l0
    assert moved or notes, (l0, l1, "nothing moved and no warning said why")


@pytest.mark.parametrize("name", ["SALSA", "AdamSLS", "PLASLS", "ALSALS"])
def test_float16_parameters_get_the_float16_reason_and_train_with_a_larger_eps(name):
    # float16 parameters with eps=1e-8: g^2 and eps underflow, the denominators are 0 and every
    # step is skipped; the warning named a loss scale, which was not the cause
    seed_cpu(0)
    x, y = torch.randn(64, 6).half(), torch.randint(0, 3, (64,))
    make = getattr(autostep, name)
    for eps in (1e-8, 1e-4):
        seed_cpu(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).half()
        opt = make(model.parameters(), eps=eps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [float(opt.step(lambda: nn.functional.cross_entropy(model(x).float(), y)))
                      for _ in range(25)]
        notes = [str(w.message) for w in caught if "moved nothing" in str(w.message)]
        if eps == 1e-8:
            assert opt.skipped_steps == 25 and len(notes) == 1
            assert "float16" in notes[0] and "torch.autocast" in notes[0] and "eps=1e-4" in notes[0]
            assert "eps=1e-08 is below" in notes[0]
            assert "rescale" not in notes[0]
        else:
            assert opt.skipped_steps == 0 and not notes and losses[-1] < 0.8 * losses[0]
    # float16 gradients too large for (1 - beta2) g^2 (|g| above ~8e3): the same reason, any eps
    seed_cpu(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).half()
    opt = make(model.parameters(), eps=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step(lambda: nn.functional.cross_entropy(model(x).float(), y) * 1e5)
    notes = [str(w.message) for w in caught if "moved nothing" in str(w.message)]
    assert opt.skipped_steps == 1 and len(notes) == 1 and "inf above ~8e3" in notes[0]
    assert "eps=0.0001" not in notes[0] and "torch.autocast" in notes[0]



def test_the_float16_note_needs_float16_moments_that_are_finite_in_float32():
    from autostep.optim._adam import AdamMoments
    from autostep.optim._armijo import _half_note
    from autostep.optim._armijo_plan import Plan

    def plan(dtype, g):
        p = torch.ones(4, dtype=dtype)
        mo = AdamMoments({}, [p], [torch.full((4,), g, dtype=dtype)], (0.9, 0.999), 1e-8)
        return Plan(search=[], moments=[mo])

    assert "eps=1e-08 is below" in _half_note(plan(torch.float16, 1e-3))  # v underflows: finite in fp32
    assert _half_note(plan(torch.float32, 1e-3)) is None  # not float16
    assert _half_note(plan(torch.bfloat16, 1e-3)) is None
    assert _half_note(plan(torch.float16, float("inf"))) is None  # not finite in float32 either
    assert _half_note(Plan(search=[])) is None and _half_note(None) is None  # no Adam moments


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("PAL", "LABPAL"))])
@settings(max_examples=4, deadline=None)
@given(exponent=st.integers(-30, 30))
@example(exponent=21)  # momentum: float32 <g, d> overflowed with both signs (NaN slope)
@example(exponent=-30)
def test_parabolic_searches_are_scale_invariant(name, exponent):
    """PAL/LABPAL work on the unit direction, with norms and slopes that neither overflow nor
    underflow (float64 where float32 would): at any scale float32 holds the run moves and skips
    no more steps than the unscaled run (before, at 1e20 every step was a "zero direction")."""
    *_, ref = _scaled_run(name, 0)
    _, l0, l1, notes, opt = _scaled_run(name, exponent)
    assert abs(l1 - l0) > 1e-3 and not notes
    assert opt.skipped_steps <= ref.skipped_steps + 2, (exponent, opt.skipped_steps, ref.skipped_steps)
    assert opt.nonfinite_steps == 0


def test_scale_safe_norm_and_dot():
    from autostep.optim._reductions import dot_float, sq_norm_float
    for scale in (1e30, 1e-30, 1.0):
        x = [torch.full((4,), 3.0) * scale, torch.full((2,), 4.0) * scale]
        assert sq_norm_float(x) == pytest.approx((9 * 4 + 16 * 2) * scale ** 2, rel=1e-6)
        assert dot_float(x, x) == pytest.approx((9 * 4 + 16 * 2) * scale ** 2, rel=1e-6)
    big = [torch.tensor([3e20, -4e20]), torch.tensor([1.0])]
    other = [torch.tensor([5e20, 2e20]), torch.tensor([0.0])]  # float32 dot: inf - inf = NaN
    assert dot_float(big, other) == pytest.approx(3e20 * 5e20 - 4e20 * 2e20, rel=1e-6)
    assert sq_norm_float([torch.zeros(3)]) == 0.0
    assert math.isnan(sq_norm_float([torch.tensor([math.nan, 1.0])]))


@pytest.mark.parametrize("others", [[], [torch.float32], [torch.float64]])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_squared_norms_of_16_bit_tensors_are_float32_accurate(half, others):
    # a 16-bit norm keeps 8 (bfloat16) or 11 (float16) bits; the squared norms that LABPAL's
    # NSGD step, SLS's decrease term and max_grad_norm use are now accumulated in float32
    from autostep.optim._reductions import sq_norms
    torch.manual_seed(0)
    xs = [(torch.rand(1000) * 1e-3).to(half)] + [torch.rand(7).to(dt) for dt in others]
    exact = sum(float((x.double() ** 2).sum()) for x in xs)
    got = float(sq_norms(xs))
    assert got == pytest.approx(exact, rel=1e-6)
    assert float(sq_norms(xs, weights=[0.5] * len(xs))) == pytest.approx(exact / 2, rel=1e-6)


def test_fault_table_is_large_enough():
    assert len(FAULTS) >= 40, len(FAULTS)
    assert len(set(FAULTS)) == len(FAULTS)
