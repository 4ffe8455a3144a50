"""torch's distributed checkpoint helpers keep every autostep optimizer's whole state.

``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` keep only ``state`` and
``param_groups`` and create a fresh optimizer's state by calling ``step(closure=None)`` with zero
gradients; a save -> load -> continue through them (and through ``torch.distributed.checkpoint``
files) must equal uninterrupted training bit for bit.  Single process: the helpers work without a
process group.
"""

import copy
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

import autostep
from optimizer_infos import CASES, CONFORMANCE, names

NAMES = names(CONFORMANCE)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(start, steps):
    for k in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + k)
        x = torch.randn(32, 8, generator=g)
        y = (x[:, :3] * torch.tensor([1.0, -2.0, 0.5])).argmax(1)
        yield x, y


def train(model, opt, start, steps):
    for xb, yb in batches(start, steps):
        opt.step(lambda: nn.functional.cross_entropy(model(xb), yb))


def snapshot(opt):
    return {k: getattr(opt, k) for k in ("forwards", "backwards", "trials", "steps")}


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flat"])
@pytest.mark.parametrize("name", NAMES)
def test_dcp_save_load_continue_equals_uninterrupted_training(name, flatten, tmp_path):
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    model = make_model()
    opt = CASES[name](model.parameters())
    train(model, opt, 0, 13)  # crosses LABPAL's phase boundaries, SALSA's amortize warm-up starts
    osd = get_optimizer_state_dict(model, opt, options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group, saving without one"
        dcp.save({"model": get_model_state_dict(model), "optim": osd}, checkpoint_id=str(tmp_path))

    model2 = make_model(seed=1)  # different weights: everything must come from the checkpoint
    opt2 = CASES[name](model2.parameters())
    target = {"model": get_model_state_dict(model2),
              "optim": get_optimizer_state_dict(model2, opt2, options=options)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, checkpoint_id=str(tmp_path))
    set_model_state_dict(model2, target["model"])
    set_optimizer_state_dict(model2, opt2, target["optim"], options=options)
    assert snapshot(opt2) == snapshot(opt)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]

    train(model, opt, 13, 12)
    train(model2, opt2, 13, 12)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert snapshot(opt2) == snapshot(opt)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize("name", NAMES)
def test_helpers_in_memory_round_trip_and_only_torch_keys(name):
    model = make_model()
    opt = CASES[name](model.parameters())
    train(model, opt, 0, 9)
    assert set(opt.state_dict()) == {"state", "param_groups"}
    # the helpers return live references to the state tensors (as for torch's own optimizers)
    osd = copy.deepcopy(get_optimizer_state_dict(model, opt))
    model2 = make_model()
    model2.load_state_dict(model.state_dict())
    opt2 = CASES[name](model2.parameters())
    set_optimizer_state_dict(model2, opt2, osd)
    train(model, opt, 9, 7)
    train(model2, opt2, 9, 7)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert snapshot(opt2) == snapshot(opt)


@pytest.mark.parametrize("name", NAMES)
def test_step_without_closure_and_zero_grads_only_creates_state(name):
    model = make_model()
    opt = CASES[name](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    groups_before = opt.state_dict()["param_groups"]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert opt.step() is None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.state_dict()["param_groups"] == groups_before  # no counter moved
    assert opt.forwards == 0 and opt.steps == 0
    # the state now has the structure of a trained optimizer's (what DCP loads into)
    opt.zero_grad(set_to_none=True)
    m = make_model()
    trained = CASES[name](m.parameters())
    train(m, trained, 0, 3)
    assert [sorted(s) for s in opt.state.values()] == [sorted(s) for s in trained.state.values()]


@pytest.mark.parametrize("name", ["SLS", "ALSALS", "PAL", "LABPAL-sgd"])
def test_step_without_closure_still_refused_with_real_gradients(name):
    model = make_model()
    opt = CASES[name](model.parameters())
    with pytest.raises(autostep.ClosureError, match="needs a closure"):
        opt.step()  # no gradient at all
    nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0])).backward()
    with pytest.raises(autostep.ClosureError, match="needs a closure"):
        opt.step()  # torch-style step after backward: not an initialisation call


def test_old_checkpoints_with_a_top_level_key_still_load():
    model = make_model()
    opt = autostep.SALSA(model.parameters())
    train(model, opt, 0, 5)
    sd = opt.state_dict()
    legacy = {"state": sd["state"], "param_groups": [dict(g) for g in sd["param_groups"]]}
    legacy["autostep"] = legacy["param_groups"][0].pop("autostep")
    opt2 = autostep.SALSA(make_model().parameters())
    opt2.load_state_dict(legacy)
    assert snapshot(opt2) == snapshot(opt)
    assert opt2.smoothed_terms == opt.smoothed_terms


def test_state_dict_is_a_snapshot():
    model = make_model()
    opt = autostep.SALSA(model.parameters())
    train(model, opt, 0, 3)
    sd = opt.state_dict()
    forwards = sd["param_groups"][0]["autostep"]["forwards"]
    train(model, opt, 3, 2)
    assert sd["param_groups"][0]["autostep"]["forwards"] == forwards != opt.forwards
