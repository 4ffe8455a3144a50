"""memory="lean" of the Adam-direction searches: bitwise the parameters of the default mode.

The lean mode rebuilds the Adam denominator (ALSALS: the whole direction) chunk by chunk at each
use instead of keeping it for the step (:mod:`autostep._lean`); every element goes through the
same operations, so the parameters and moments after several steps, with backtracking, weight
decay and clipping, must equal the default mode's exactly (``torch.equal``, no tolerance)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autostep
from autostep._lean import CHUNK

CASES = [
    ("AdamSLS", {}),
    ("SALSA", {}),
    ("SALSA", {"amortize": 3}),
    ("ALSALS", {}),
    ("ALSALS", {"smooth": 0.9, "amortize": 3}),
    ("PLASLS", {}),
]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # the 190x190 weight (36100 elements) is more than one chunk: it is rebuilt in two pieces
    return nn.Sequential(nn.Linear(12, 190), nn.Tanh(), nn.Linear(190, 190), nn.Tanh(),
                         nn.Linear(190, 3))


def _run(name: str, kwargs: dict, memory: str, steps: int, accumulate: bool = False):
    model = _model(0)
    groups = [{"params": list(model[0].parameters()) + list(model[2].parameters())},
              {"params": list(model[4].parameters()), "weight_decay": 0.05}]
    opt = getattr(autostep, name)(groups, lr=1.0, max_lr=1.0, weight_decay=0.01,
                                  max_grad_norm=0.5, memory=memory, **kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 12, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)

        def closure():
            if not accumulate:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
            return loss
        if accumulate:  # gradients accumulated before the step: the slope is measured apart
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).mul(0.5).backward()
        opt.step(closure)
    return model, opt


@pytest.mark.parametrize("name,kwargs", CASES, ids=[n + "".join(f"-{k}" for k in kw) for n, kw in CASES])
def test_lean_steps_are_bitwise_the_default_steps(name, kwargs):
    assert 190 * 190 > CHUNK
    steps = 14 if "amortize" in kwargs else 8  # amortised: 10 searches, then reused steps
    fast, fo = _run(name, kwargs, "fast", steps)
    lean, lo = _run(name, kwargs, "lean", steps)
    searches = fo._ls["searches"]
    assert fo.trials > searches, "no search backtracked: rebuilt trial points would go untested"
    if "amortize" in kwargs:
        assert searches < steps, "no step reused the step size: the direct final move is untested"
    for p, q in zip(fast.parameters(), lean.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(fast.parameters(), lean.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fo.state[p][key], lo.state[q][key])
    assert fo.trials == lo.trials and fo.skipped_steps == lo.skipped_steps
    assert [g["lr"] for g in fo.param_groups] == [g["lr"] for g in lo.param_groups]


@pytest.mark.parametrize("name", ["AdamSLS", "ALSALS"])
def test_lean_with_accumulated_gradients_is_bitwise(name):
    """A torch-style closure adding to gradients accumulated before the step: the Armijo slope is
    computed from the rebuilt direction (materialised in the line's buffer)."""
    fast, _ = _run(name, {}, "fast", 4, accumulate=True)
    lean, _ = _run(name, {}, "lean", 4, accumulate=True)
    for p, q in zip(fast.parameters(), lean.parameters()):
        assert torch.equal(p, q)


def test_memory_is_validated_and_round_trips():
    model = _model(0)
    with pytest.raises(ValueError, match=r"memory must be one of \('fast', 'lean'\), got 'small'"):
        autostep.SALSA(model.parameters(), memory="small")
    _, opt = _run("AdamSLS", {}, "lean", 2)
    sd = opt.state_dict()
    assert all(g["memory"] == "lean" for g in sd["param_groups"])
    other = autostep.AdamSLS([{"params": list(_model(0)[0].parameters()) + list(_model(0)[2].parameters())},
                              {"params": list(_model(0)[4].parameters())}], memory="fast")
    other.load_state_dict(sd)
    assert other.param_groups[0]["memory"] == "lean"
    # a checkpoint of an older version (no "memory" key) keeps the optimizer's own value
    for g in sd["param_groups"]:
        del g["memory"]
    other = autostep.AdamSLS([{"params": list(_model(0)[0].parameters()) + list(_model(0)[2].parameters())},
                              {"params": list(_model(0)[4].parameters())}], memory="lean")
    other.load_state_dict(sd)
    assert [g["memory"] for g in other.param_groups] == ["lean", "lean"]
    with pytest.raises(ValueError, match="memory must be the same in every param group"):
        autostep.ALSALS([{"params": [nn.Parameter(torch.ones(2))]},
                         {"params": [nn.Parameter(torch.ones(2))], "memory": "lean"}])
