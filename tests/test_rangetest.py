"""The classic range test and its suggestion rules (the baselines of the step-sampling paper)."""

import math

import pytest
import torch

import autostep.finder as F
from autostep.finder.rangetest import (ema_debiased, ema_plain, fastai_rules, rule_min_div_10,
                                       rule_slide, rule_steep, rule_steepest, rule_valley)

from test_finder_search import adam, assert_same, mse, sgd, snapshot, tiny

LRS = [10 ** (-6 + 6 * i / 99) for i in range(100)]


# ----------------------------------------------------------------------------- rules on floats
def test_min_div_10():
    losses = [3.0, 2.0, 0.5, 1.0]
    assert rule_min_div_10(LRS[:4], losses) == pytest.approx(LRS[2] / 10)


def test_steep_is_the_most_negative_slope_on_the_log_axis():
    lrs = [1e-4, 1e-3, 1e-2, 1.0]  # the last gap is two decades wide
    losses = [2.0, 1.8, 1.0, 0.0]  # drops 0.2, 0.8 (per decade) and 1.0 over 2 decades (0.5)
    assert rule_steep(lrs, losses) == 1e-3


def test_valley_picks_inside_the_longest_decreasing_run():
    # a slowly rising plateau, a strictly decreasing run over indices 20..59 (40 points), a rise
    losses = [1.9 + 0.001 * i for i in range(20)]
    losses += [2.0 - 0.04 * k for k in range(40)]
    losses += [0.5 + 0.2 * k for k in range(40)]
    # the longest strictly decreasing subsequence is the run itself: L = 40, ending at 59;
    # start = 59 - 40 = 19, pick = 19 + int(40/3) + int(40/3/2) = 19 + 13 + 6 = 38
    assert rule_valley(LRS, losses) == LRS[38]


def test_valley_with_a_noisy_descent_still_lands_in_it():
    losses = [2.0] * 20 + [2.0 - 0.04 * k + (0.05 if k % 2 else 0.0) for k in range(40)]
    losses += [0.5 + 0.2 * k for k in range(40)]
    assert LRS[20] <= rule_valley(LRS, losses) <= LRS[59]


def test_slide_on_a_straight_line_stops_at_once():
    losses = [2.0 - 0.01 * i for i in range(50)]
    assert rule_slide(LRS[:50], losses) == LRS[49 - 15]


def test_slide_walks_left_past_a_sharp_rise():
    # flat, then a steep rise over the last 10 points: the window slides until both ends are flat
    losses = [1.0] * 60 + [1.0 + 0.5 * k * k for k in range(1, 11)]
    pick = rule_slide(LRS[:70], losses)
    i = LRS.index(pick)
    assert i < 60 - 15
    assert rule_slide(LRS[:5], [1, 2, 3, 4, 5]) == LRS[0]  # shorter than the window


def test_steepest_uses_light_smoothing_and_skips_the_ends():
    # a sigmoid drop centred at index 50 with alternating noise, and a blow-up at the end
    raw = [2.0 - 1.5 / (1 + math.exp(-(i - 50) / 4)) + 0.02 * (-1) ** i for i in range(95)]
    raw += [3.0, 10.0, 30.0, 60.0, 100.0]
    pick = rule_steepest(LRS, raw)
    i = LRS.index(pick)
    assert 50 <= i <= 70  # the 0.05-weight EMA lags the raw curve by a few points
    sm = ema_plain(raw)
    assert sm[0] == raw[0] and sm[1] == pytest.approx(0.05 * raw[1] + 0.95 * raw[0])


def test_steepest_on_a_recorded_curve_with_interior_points_only():
    """The bench's torch-lr-finder selector: losses already smoothed (no EMA, no cut), the one-sided
    differences at the two ends left out, and the middle rate when fewer than three points remain."""
    lrs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.0]  # steepest drop at the last point (one-sided)
    kw = dict(smooth_f=None, diverge_th=None, skip_start=0, skip_end=0)
    assert rule_steepest(lrs, losses, **kw) == 6.0
    assert rule_steepest(lrs, losses, **kw, ends=False) == 5.0  # (0.0 - 0.7) / 2 at index 4
    assert rule_steepest(lrs, [1.0, math.nan, 0.9, 0.5, 0.4, 0.35], **kw, ends=False) == 4.0  # not beside a NaN
    assert rule_steepest(lrs[:4], losses[:4], smooth_f=None, diverge_th=None, skip_start=1, skip_end=1,
                         ends=False) == 3.0  # two points left: the middle rate
    assert rule_steepest([1.0], [1.0], ends=False) == 1.0


def test_smoothers():
    assert ema_debiased([3.0] * 10) == pytest.approx([3.0] * 10)  # debiasing removes the warm-up
    assert ema_debiased([1.0, 0.0], beta=0.5) == pytest.approx([1.0, 0.5 * 0.5 / 0.75])
    assert ema_plain([1.0, 0.0, 0.0], weight=0.5) == [1.0, 0.5, 0.25]


def test_fastai_rules_drop_the_ends():
    smoothed = [2.0] * 10 + [2.0 - 0.05 * k for k in range(30)] + [0.6 + 0.3 * k for k in range(10)]
    lrs = LRS[:50]
    picks = fastai_rules(lrs, smoothed, num_it=50)
    assert set(picks) == {"valley", "steep", "min_div_10", "slide"}
    assert picks["min_div_10"] == pytest.approx(lrs[39] / 10)
    assert lrs[5] <= picks["valley"] <= lrs[39]


def test_rules_reject_too_short_curves():
    with pytest.raises(ValueError, match="at least 2 points"):
        rule_steep([1e-3], [1.0])
    with pytest.raises(ValueError, match="learning rates but"):
        rule_valley([1e-3, 1e-2], [1.0])


# ----------------------------------------------------------------------------- the ramp
class RecordingSGD(torch.optim.SGD):
    def step(self, closure=None):
        self.seen = getattr(self, "seen", []) + [[g["lr"] for g in self.param_groups]]
        return super().step(closure)


def test_ramp_restores_the_model_and_reports_every_rule():
    model, train, val = tiny()
    before = snapshot(model)
    rng = torch.get_rng_state()
    made = []

    def make(params, lr):
        # two groups at a 1:0.1 ratio: the ramp must keep the ratio
        params = list(params)
        made.append(RecordingSGD([{"params": params[:2]}, {"params": params[2:], "lr": lr * 0.1}],
                                 lr=lr))
        return made[-1]

    r = F.range_test(model, make, mse, train, start_lr=1e-5, end_lr=1e-1, num_it=40,
                     progress=False)
    assert_same(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert r.method == "range_test" and r.window is None
    assert set(r.picks) == {"valley", "steep", "min_div_10", "slide", "steepest"}
    assert r.lr == r.picks["valley"]
    lrs = [t.lr for t in r.trials]
    assert lrs[0] == pytest.approx(1e-5) and lrs == sorted(lrs)
    ratios = [lrs[i + 1] / lrs[i] for i in range(len(lrs) - 1)]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential
    seen = made[0].seen
    assert all(b == pytest.approx(0.1 * a) for a, b in seen)
    assert seen[-1][0] == pytest.approx(lrs[len(seen) - 1])
    assert r.steps_spent == len(r.trials) <= 40


def test_ramp_stops_when_the_loss_diverges():
    model, train, _ = tiny(dropout=0.0)
    r = F.range_test(model, sgd, mse, train, start_lr=1e-4, end_lr=1e4, num_it=80, progress=False)
    assert r.info["stopped_early"]
    assert r.steps_spent < 80
    sm = r.curve["smoothed"]
    assert not math.isfinite(sm[-1]) or sm[-1] > 4 * min(sm[:-1])
    assert all(math.isfinite(v) for v in r.picks.values())


def test_reset_mode_picks_the_lowest_validation_loss():
    model, train, val = tiny()
    before = snapshot(model)
    r = F.range_test(model, adam, mse, train, val, mode="reset", start_lr=1e-4, end_lr=1.0,
                     num=5, steps=5, progress=False)
    assert_same(model, before)
    assert r.method == "reset_per_rate"
    assert r.lr == min(r.trials, key=lambda t: t.val_loss).lr
    assert [t.lr for t in r.trials] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert r.steps_spent == sum(t.steps for t in r.trials)
    # reset per rate: the same rate twice gives the same loss (reuses the search's trial runner)
    again = F.range_test(model, adam, mse, train, val, mode="reset", start_lr=1e-4, end_lr=1.0,
                         num=5, steps=5, progress=False)
    assert [t.val_loss for t in again.trials] == [t.val_loss for t in r.trials]


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(mode="cyclic"), ValueError, "mode must be"),
        (dict(start_lr=1.0, end_lr=1e-3), ValueError, "end_lr must be larger"),
        (dict(start_lr=-1.0), ValueError, "start_lr"),
        (dict(num_it=1), ValueError, "num_it"),
        (dict(suggest="best"), ValueError, "suggest must be one of"),
        (dict(beta=1.0), ValueError, "beta"),
        (dict(stop_div=0.5), ValueError, "stop_div"),
        (dict(mode="reset"), ValueError, "pass val_data"),
        (dict(model=None), TypeError, "nn.Module"),
        (dict(make_optimizer=lambda p, lr: None), TypeError, "torch.optim.Optimizer"),
        (dict(train_data=iter([])), TypeError, "one-shot"),
    ],
)
def test_range_test_bad_arguments(kw, exc, match):
    model, train, _ = tiny(dropout=0.0)
    before = snapshot(model)
    args = dict(model=model, make_optimizer=sgd, loss_fn=mse, train_data=train, num_it=10,
                progress=False)
    args.update(kw)
    with pytest.raises(exc, match=match):
        F.range_test(**args)
    assert_same(model, before)


def test_range_test_result_plots(tmp_path):
    model, train, val = tiny()
    r = F.range_test(model, adam, mse, train, num_it=30, progress=False)
    path = r.plot(str(tmp_path / "ramp.png"))
    with open(path, "rb") as fh:
        assert fh.read(4) == b"\x89PNG"
    w = F.range_test(model, adam, mse, train, val, mode="reset", num=4, steps=3, progress=False)
    assert w.plot(str(tmp_path / "reset.png")).endswith("reset.png")
    assert "lowest" in w.summary()
