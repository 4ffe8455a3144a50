"""Conformance: every optimizer input of the table (tests/optimizer_infos.py) against the conventions,
every error input of the table refused, and the table's flags and registry names checked against
the optimizers."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import autostep
from autostep import registry
from autostep._closure import needs_closure
from optimizer_infos import CASES, CONFORMANCE, INFOS, names, without_keys

NAMES = names(CONFORMANCE)


def make_data(n=96, d=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (x @ w).argmax(1)
    return x, y


def make_model(seed=0, dropout=0.0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(8, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers.append(nn.Tanh())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, 3))
    return nn.Sequential(*layers)


def batches(x, y, steps, bs=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (bs,), generator=g)
        yield x[idx], y[idx]


def train(model, opt, data, steps, seed=1):
    losses = []
    for xb, yb in batches(*data, steps, seed=seed):
        losses.append(float(opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))))
    return losses


def full_loss(model, data):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data[0]), data[1]))


def params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_loss_goes_down(name):
    data = make_data()
    model = make_model()
    opt = CASES[name](model.parameters())
    before = full_loss(model, data)
    train(model, opt, data, 60)
    after = full_loss(model, data)
    assert after < 0.7 * before, (before, after)
    assert opt.forwards >= 60 and opt.backwards >= 1
    assert opt.param_groups[0]["lr"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    data = make_data()
    model = make_model(dropout=0.2)
    opt = CASES[name](model.parameters())
    train(model, opt, data, 15, seed=3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    rng = torch.get_rng_state()
    train(model, opt, data, 15, seed=4)

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = make_model(seed=99, dropout=0.2)
    model2.load_state_dict(saved["model"])
    opt2 = CASES[name](model2.parameters())
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(rng)
    train(model2, opt2, data, 15, seed=4)
    assert params_equal(model, model2)
    assert opt2.forwards == opt.forwards and opt2.trials == opt.trials
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_has_no_growing_history(name):
    data = make_data()
    model = make_model()
    opt = CASES[name](model.parameters())
    train(model, opt, data, 5)
    size5 = len(pickle_bytes(opt.state_dict()))
    train(model, opt, data, 40)
    size45 = len(pickle_bytes(opt.state_dict()))
    assert size45 <= size5 + 64  # a few integers may gain digits, nothing grows with steps


def pickle_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy(name):
    data = make_data()
    model = make_model()
    opt = CASES[name](model.parameters())
    train(model, opt, data, 5)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    rng = torch.get_rng_state()
    train(model, opt, data, 5, seed=7)
    torch.set_rng_state(rng)
    train(model2, opt2, data, 5, seed=7)
    assert params_equal(model, model2)


@pytest.mark.parametrize("name", NAMES)
def test_dict_param_groups(name):
    data = make_data()
    model = make_model()
    first, last = model[0], model[-1]
    factory = CASES[name]
    probe = factory([nn.Parameter(torch.zeros(1))])
    lr0 = probe.defaults["lr"]
    opt = factory([{"params": first.parameters()}, {"params": last.parameters(), "lr": lr0 / 10}])
    assert opt.param_groups[1]["lr"] == pytest.approx(lr0 / 10)
    before = full_loss(model, data)
    train(model, opt, data, 40)
    assert full_loss(model, data) < before
    assert len(opt.param_groups) == 2
    assert all(g["lr"] > 0 for g in opt.param_groups)


@pytest.mark.parametrize("name", NAMES)
def test_grad_none_parameters_are_skipped(name):
    data = make_data()
    model = make_model()
    unused = nn.Parameter(torch.randn(5))
    opt = CASES[name](list(model.parameters()) + [unused])
    before = unused.detach().clone()
    train(model, opt, data, 10)
    assert unused.grad is None
    assert torch.equal(unused, before)
    assert len(opt.state.get(unused, {})) == 0


ERROR_CASES = [(i, e) for i in INFOS for e in i.error_inputs]


@pytest.mark.parametrize("info, bad", ERROR_CASES, ids=[f"{i.name}-{e.id}" for i, e in ERROR_CASES])
def test_bad_hyper_parameters_raise(info, bad):
    with pytest.raises(bad.error, match=bad.match):
        info.cls([nn.Parameter(torch.zeros(1))], **bad.kwargs)


GROUP_ERROR_CASES = [(i, e) for i, e in ERROR_CASES
                     if set(e.kwargs) <= set(i.cls([nn.Parameter(torch.zeros(1))]).defaults)]


@pytest.mark.parametrize("info, bad", GROUP_ERROR_CASES,
                         ids=[f"{i.name}-{e.id}" for i, e in GROUP_ERROR_CASES])
def test_bad_hyper_parameters_in_an_added_group_raise_and_add_nothing(info, bad):
    opt = info.cls([nn.Parameter(torch.zeros(1))])
    with pytest.raises(bad.error, match=bad.match):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], **bad.kwargs})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_closure_misuse_raises(name):
    data = make_data()
    model = make_model()
    opt = CASES[name](model.parameters())
    xb, yb = data[0][:16], data[1][:16]
    snapshot = copy.deepcopy(model.state_dict())

    assert CASES[name].info.needs_closure  # the table holds closure optimizers only
    with pytest.raises(autostep.ClosureError, match="needs a closure"):
        opt.step()

    with pytest.raises(autostep.ClosureError, match="scalar"):
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb, reduction="none"))

    with pytest.raises(autostep.ClosureError, match="item"):
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb).item())

    with pytest.raises(autostep.ClosureError, match="does not require grad"):
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb).detach())

    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert opt.steps == 0


@pytest.mark.parametrize("name", NAMES)
def test_dropout_masks_replayed_within_a_step_and_fresh_across_steps(name):
    data = make_data()
    model = make_model(dropout=0.5)
    masks = []
    model[2].register_forward_hook(lambda m, i, o: masks.append((o == 0).clone()))
    opt = CASES[name](model.parameters())
    per_step = []
    for xb, yb in batches(*data, 6):
        masks.clear()
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
        assert len(masks) == opt.last_step["forwards"]
        for m in masks[1:]:
            assert torch.equal(m, masks[0])
        per_step.append(masks[0])
    assert not torch.equal(per_step[0], per_step[1])


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_buffers_only_updated_by_the_first_evaluation(name):
    data = make_data()
    model = make_model(bn=True)
    opt = CASES[name](model.parameters())
    for xb, yb in batches(*data, 4):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            ref(xb)  # exactly one training-mode forward at the start point
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
        assert opt.last_step["forwards"] >= 1
        bn, bn_ref = model[1], ref[1]
        assert torch.equal(bn.running_mean, bn_ref.running_mean)
        assert torch.equal(bn.running_var, bn_ref.running_var)
        assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked)


@pytest.mark.parametrize("name", NAMES)
def test_nan_start_loss_changes_nothing(name):
    data = make_data()
    model = make_model(bn=True)
    opt = CASES[name](model.parameters())
    train(model, opt, data, 3)
    model_before = copy.deepcopy(model.state_dict())
    opt_before = pickle_bytes(opt.state_dict())
    rng = torch.get_rng_state()
    xb, yb = data[0][:16], data[1][:16]
    skipped, forwards = opt.skipped_steps, opt.forwards
    with pytest.warns(RuntimeWarning, match="start loss is not finite.*skipped"):
        loss = opt.step(lambda: nn.functional.cross_entropy(model(xb), yb) * math.nan)
    assert math.isnan(float(loss))
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_before[k]), k
    # only the skip and the forward spent are counted; everything else is as before
    assert (opt.skipped_steps, opt.nonfinite_steps, opt.forwards) == (skipped + 1, 1, forwards + 1)
    counters = ("skipped", "nonfinite", "forwards", "backwards")  # passes spent are counted
    assert pickle_bytes(without_keys(opt.state_dict(), counters)) == pickle_bytes(
        without_keys(torch.load(io.BytesIO(opt_before), weights_only=False), counters))
    assert torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------------------- the table itself
def _one_param():
    return [nn.Parameter(torch.zeros(3))]


def _config(opt):
    """What makes two optimizers the same: class, defaults and every group's hyper-parameters."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return type(opt), repr(opt.defaults), repr(groups)


def test_no_two_cases_build_the_same_optimizer():
    built = {}
    for name, case in CASES.items():
        built.setdefault(_config(case(_one_param())), []).append(name)
    assert [names for names in built.values() if len(names) > 1] == []


def test_registry_methods_are_table_inputs():
    """Every autostep closure method of the registry builds exactly the table input that names it,
    so running the table covers what the registry builds (and each input names a real method)."""
    by_method = {}
    for name, case in CASES.items():
        if case.input.registry is not None:
            assert case.input.registry not in by_method, case.input.registry
            by_method[case.input.registry] = name
    methods = registry.list_methods(family="autostep", kind="closure")
    assert sorted(by_method) == sorted(methods)
    for method in methods:
        case = CASES[by_method[method]]
        assert _config(registry.create(method, _one_param())) == _config(case(_one_param())), method
        assert registry.get(method).needs_closure == case.info.needs_closure


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_flags_match_the_optimizer(info):
    opt = info.cls(_one_param())
    keys = set(opt.defaults)
    assert info.supports_weight_decay == ({"weight_decay", "max_grad_norm"} <= keys)
    assert info.has_amortize == ("amortize" in keys)
    if not info.has_amortize:
        with pytest.raises(TypeError, match="amortize"):
            info.cls(_one_param(), amortize=5)
    assert info.is_armijo == ({"c", "max_trials"} <= keys)
    data, model = make_data(), make_model()
    opt = info.cls(model.parameters())
    assert info.is_per_layer == ("layer_lrs" in opt.param_groups[0])
    before = [p.detach().clone() for p in model.parameters()]
    xb, yb = data[0][:32], data[1][:32]
    assert info.needs_closure == needs_closure(opt)  # the class attribute step_requires_closure
    if info.needs_closure:
        with pytest.raises(autostep.ClosureError, match="needs a closure"):
            opt.step()
    opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))
    moved = not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert moved == info.first_call_updates
    from test_fsdp import METHODS, PLAN  # the two-rank FSDP2 runs (slow, multi-process)
    sharded = {type(METHODS[n](_one_param())) for n in PLAN["fsdp2"]}
    assert info.supports_sharding == (info.cls in sharded)
