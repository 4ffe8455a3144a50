"""The one argument validator and the one scalar-loss check (autostep._validate): the same
exception type and the same wording wherever a loss_fn or a closure returns something else."""

import pytest
import torch
from torch import nn

import autostep
from autostep import _validate as V
from autostep.autolr.evaluate import SuperbatchLoss
from autostep.distributed import Reducer
from autostep.finder import TrialRunner


def _bad_losses():
    return [(1.5, "item"), (None, "return loss"), (torch.ones(3), r"shape \(3,\)")]


@pytest.mark.parametrize("value, match", _bad_losses())
def test_loss_fn_users_raise_the_same_type_error(value, match):
    model = nn.Linear(2, 1)
    batches = [(torch.zeros(4, 2),)]
    with pytest.raises(TypeError, match=match):   # the LR search
        TrialRunner(model, lambda p, lr: torch.optim.SGD(p, lr=lr), lambda m, b: value, batches,
                    batches, 1).run(0.1)
    with pytest.raises(TypeError, match=match):   # AutoLR's superbatch loss
        SuperbatchLoss(model, lambda m, b: value, Reducer()).local(batches, autostep._closure.RNGSnapshot())
    with pytest.raises(TypeError, match=match):   # the range test
        autostep.range_test(model, lambda p, lr: torch.optim.SGD(p, lr=lr), lambda m, b: value,
                            batches, num_it=3, progress=False)


@pytest.mark.parametrize("value, match", _bad_losses())
def test_closure_returning_a_non_scalar_raises_closure_error_with_the_same_wording(value, match):
    w = nn.Parameter(torch.ones(2))
    opt = autostep.SLS([w])
    with pytest.raises(autostep.ClosureError, match=match):
        opt.step(lambda: value)


def test_number_checks_name_the_value_and_the_hint():
    with pytest.raises(ValueError, match=r"tol must be > 0, got -1 \(decades\)"):
        V.positive("tol", -1, " (decades)")
    with pytest.raises(ValueError, match="x must be a number, got str 'a'"):
        V.nonnegative("x", "a")
    with pytest.raises(ValueError, match="must be finite"):
        V.finite("x", float("inf"))
    with pytest.raises(ValueError, match="must be > 1.0"):
        V.greater_than("diverge", 1.0, 1.0)
    with pytest.raises(ValueError, match="integer >= 2"):
        V.positive_int("n", True, 2)
    assert V.increasing_pair("r", (1e-3, 1)) == (1e-3, 1.0)
    with pytest.raises(ValueError, match="increasing"):
        V.increasing_pair("r", (1, 1e-3))
    with pytest.raises(TypeError, match="one-shot iterator"):
        V.reiterable("data", iter([1]))
