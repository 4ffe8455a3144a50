"""The schedule-aware peak (finder/peak.py) and the step budget of find_lr (issue 9)."""

import math

import pytest
import torch
from torch import nn

import autostep.finder as F
from autostep.finder.peak import PEAK_SCALE, BudgetExhausted, peak_search, trial_factor

from test_finder_search import adam, assert_same, mse, snapshot, tiny


def bowl(x, centre=-2.0):
    """A trial-loss curve in x = log10(lr): flat at 2 for tiny rates, minimum 0.5 at ``centre``,
    diverging 1.5 decades above it."""
    if x > centre + 1.5:
        return math.inf
    return 0.5 + 1.5 * (1 - math.exp(-0.5 * ((x - centre) / 0.6) ** 2))


@pytest.mark.parametrize("centre", [-2.0, -2.3, -3.6])
def test_peak_search_finds_the_known_minimum_within_tol(centre):
    calls = []

    def evaluate(lr):
        calls.append(lr)
        return bowl(math.log10(lr), centre)

    best, points, info = peak_search(evaluate, 2.0, (1e-5, 1.0), tol=0.125)
    assert abs(math.log10(best) - centre) < 0.125 / 2
    assert len(calls) == len(points) <= 12  # decades from the top, then a few bisections
    assert max(calls) == 1.0  # the scan starts at the top of the range


def test_peak_search_extends_above_the_range_when_the_best_is_at_its_top():
    best, points, info = peak_search(lambda lr: bowl(math.log10(lr), 0.5), 2.0, (1e-5, 1e-2))
    assert abs(math.log10(best) - 0.5) < 0.125
    assert any("extended" in n for n in info["notes"])


def test_peak_search_answers_from_what_it_has_when_the_budget_runs_out():
    n = {"calls": 0}

    def evaluate(lr):
        if n["calls"] == 4:
            raise BudgetExhausted()
        n["calls"] += 1
        return bowl(math.log10(lr))

    best, points, info = peak_search(evaluate, 2.0, (1e-5, 1.0))
    assert info["budget_exhausted"] and len(points) == 4
    assert best is not None and -2.5 <= math.log10(best) <= -1.5


def test_peak_search_without_a_converging_trial_returns_none():
    best, points, info = peak_search(lambda lr: math.inf, 2.0, (1e-3, 1.0), max_extend=1)
    assert best is None and points and all(math.isinf(v) for v in points.values())


def test_trial_factor_compresses_the_schedule_into_the_trial():
    k = 10
    cos = [trial_factor("cosine", t, k) for t in range(k)]
    lin = [trial_factor("linear", t, k) for t in range(k)]
    assert cos[:2] == [0.5, 1.0] and lin[:2] == [0.5, 1.0]  # warm-up over k // 5 steps
    assert all(a >= b for a, b in zip(cos[1:], cos[2:])) and cos[-1] < 0.05
    assert lin[2:] == pytest.approx([1 - j / 8 for j in range(8)])
    assert all(trial_factor("constant", t, k) == 1.0 for t in range(k))


def test_trials_run_the_schedule():
    model, train, val = tiny(dropout=0.0, bn=False)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    runner = F.TrialRunner(model, lambda p, lr: Spy(p, lr=lr), mse, train, val, 5,
                           lr_factor=lambda t, k: 1.0 / (t + 1))
    with runner:
        runner.run(0.01)
    assert seen == pytest.approx([0.01 / (t + 1) for t in range(5)])


def test_peak_for_a_schedule_respects_the_budget_and_restores_the_model():
    model, train, val = tiny(dropout=0.0)
    before = snapshot(model)
    r = F.find_lr(model, adam, mse, train, val, schedule="cosine", total_steps=300,
                  progress=False)
    assert_same(model, before)
    assert r.info["budget"] == 30 and r.steps_spent <= 30
    assert r.info["trial_steps"] == 6  # 30 steps // 5 trials
    assert all(t.steps <= 6 for t in r.trials)
    assert r.pick == "peak" and r.lr == pytest.approx(PEAK_SCALE["cosine"] * r.picks["best"])
    assert math.isfinite(r.lr) and r.lr > 0


def test_peak_is_above_the_papers_pick_and_below_divergence():
    model, train, val = tiny(dropout=0.0, bn=False)
    paper = F.find_lr(model, adam, mse, train, val, steps=10, progress=False)
    peak = F.find_lr(model, adam, mse, train, val, steps=10, schedule="cosine", progress=False)
    assert peak.info["budget"] is None and peak.info["trial_steps"] == 10
    assert peak.lr > paper.lr  # the short-horizon correction moves the rate up
    diverged = [t.lr for t in peak.trials if t.diverged]
    assert not diverged or peak.lr < min(diverged)


def test_budget_bounds_the_papers_search_too():
    model, train, val = tiny(dropout=0.0)
    r = F.find_lr(model, adam, mse, train, val, budget=40, progress=False)
    assert r.steps_spent <= 40 and r.info["trial_steps"] == 8
    assert r.info.get("budget_exhausted")
    assert r.pick == "log_midpoint" and math.isfinite(r.lr)
    r2 = F.find_lr(model, adam, mse, train, val, budget=40, seeds=2, progress=False)
    assert r2.steps_spent <= 40 and r2.info["trial_steps"] == 4


@pytest.mark.parametrize("change, match", [
    (dict(schedule="step"), "schedule must be"),
    (dict(budget=3), "budget"),
    (dict(budget=7, seeds=2), "budget"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=2.5), "total_steps"),
])
def test_bad_schedule_arguments(change, match):
    model, train, val = tiny(dropout=0.0)
    with pytest.raises(ValueError, match=match):
        F.find_lr(model, adam, mse, train, val, progress=False, **change)


def test_every_trial_diverging_raises_in_peak_mode_too():
    model, train, val = tiny(dropout=0.0, bn=False)

    def exploding(m, batch):
        exploding.calls += 1
        return mse(m, batch) * 10.0 ** exploding.calls
    exploding.calls = 0
    with pytest.raises(F.NoViableRateError, match="every trial diverged"):
        F.find_lr(model, adam, exploding, train, val, steps=3, schedule="cosine",
                  lr_range=(1e-3, 1e-1), progress=False)


def test_cli_schedule_peak(capsys):
    from autostep.cli import main

    code = main(["find-lr", "--schedule", "cosine", "--total-steps", "300", "--no-plot",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "peak" in out and "best trial rate" in out and "<- lr" in out
    spent = int(out.split("steps spent")[1].split()[0])
    assert spent <= 30


@pytest.mark.slow  # multi-process: two worker processes
def test_process_workers_give_the_sequential_peak():
    model, train, val = tiny(dropout=0.0, bn=False)
    batches = list(train)  # no randomness in the data order
    seq = F.find_lr(model, adam, mse, batches, val, schedule="cosine", total_steps=200,
                    progress=False)
    par = F.find_lr(model, adam, mse, batches, val, schedule="cosine", total_steps=200,
                    progress=False, executor="process", workers=2)
    assert par.lr == seq.lr and par.steps_spent == seq.steps_spent <= 20


def test_the_benchs_keywords_are_accepted():
    """bench/selectors.select_lr passes find_lr's signature for these names."""
    import inspect

    sig = inspect.signature(F.find_lr).parameters
    assert {"schedule", "total_steps", "budget"} <= set(sig)
    assert all(sig[k].default is None for k in ("schedule", "total_steps", "budget"))
