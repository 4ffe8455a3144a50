"""The classic learning-rate range test and its published suggestion rules (the paper's baselines).

``mode="ramp"`` -- one training run whose learning rate grows exponentially from ``start_lr`` to
``end_lr`` over ``num_it`` steps (Smith 2015; Gugger 2018).  The per-step training losses are
smoothed with a debiased exponential moving average (``beta = 0.98``) and the run stops early once
the smoothed loss exceeds ``stop_div`` (4) times its best value or is not finite.  The model,
gradients and generators are restored at the end.  The rules, re-implemented from their published
descriptions:

* fastai (on the smoothed losses, dropping the first ``num_it // 10`` and the last 5 points):

  - ``min_div_10``: the rate of the minimum loss divided by 10;
  - ``steep``: the rate where the finite-difference slope ``d loss / d log lr`` is most negative;
  - ``valley``: the longest strictly decreasing subsequence of the losses, and the rate about
    halfway through its middle third (index ``start + L//3 + L//6`` for a run of length ``L``);
  - ``slide``: a window of 15 points slid leftwards from the end of the curve until the gradients
    (by index) at its two ends differ by at most 0.005; the rate at its left end.

* ``steepest`` (Surmenok 2017, as in torch-lr-finder): the raw losses smoothed with weight 0.05 on
  the new value (no debiasing), truncated where that smoothed loss first exceeds 5 times its best,
  10 points dropped at the start and 5 at the end; the rate of the most negative gradient (by index,
  which is the log-lr axis for an exponential ramp).

``mode="reset"`` -- Wittmann's variant: each rate of a log-spaced grid is trained for ``steps`` steps
from the same state (the reset trials of :class:`~autostep.finder.trials.TrialRunner`) and the
lowest validation loss wins (``lowest``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from .. import _validate as V
from .._progress import progress_bar
from .._snapshot import ModelState, RNGSnapshot
from .curve import analyze
from .result import FinderResult, Trial
from .trials import TrialRunner, cycle_batches

__all__ = ["range_test", "ema_debiased", "ema_plain", "fastai_rules", "rule_min_div_10",
           "rule_steep", "rule_valley", "rule_slide", "rule_steepest", "RAMP_RULES"]

RAMP_RULES = ("valley", "steep", "min_div_10", "slide", "steepest")


# ----------------------------------------------------------------------------- smoothing
def ema_debiased(values: Sequence[float], beta: float = 0.98) -> list:
    """fastai's smoothing: ``avg = beta*avg + (1-beta)*v`` reported as ``avg / (1 - beta**t)``."""
    out, avg = [], 0.0
    for t, v in enumerate(values, 1):
        avg = beta * avg + (1.0 - beta) * v
        out.append(avg / (1.0 - beta ** t))
    return out


def ema_plain(values: Sequence[float], weight: float = 0.05) -> list:
    """torch-lr-finder's smoothing: the first value as is, then ``weight*v + (1-weight)*previous``."""
    out: list = []
    for v in values:
        out.append(v if not out else weight * v + (1.0 - weight) * out[-1])
    return out


def _gradient(values: Sequence[float]) -> list:
    """Central differences by index (one-sided at the ends), like ``numpy.gradient``."""
    n = len(values)
    if n < 2:
        return [0.0] * n
    g = [values[1] - values[0]]
    g += [(values[i + 1] - values[i - 1]) / 2.0 for i in range(1, n - 1)]
    g.append(values[-1] - values[-2])
    return g


# ----------------------------------------------------------------------------- the rules
def _check_curve(lrs, losses, minimum: int = 1) -> None:
    if len(lrs) != len(losses):
        raise ValueError(f"got {len(lrs)} learning rates but {len(losses)} losses")
    if len(lrs) < minimum:
        raise ValueError(f"this rule needs at least {minimum} points, got {len(lrs)}; run the range "
                         "test for more iterations (num_it) or a wider lr span")


def rule_min_div_10(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``minimum``: the learning rate of the lowest loss, divided by 10."""
    _check_curve(lrs, losses)
    i = min(range(len(losses)), key=lambda j: losses[j])
    return lrs[i] / 10.0


def rule_steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``steep``: the rate where ``(l[i+1]-l[i]) / (log lr[i+1] - log lr[i])`` is most negative."""
    _check_curve(lrs, losses, 2)
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
              for i in range(len(lrs) - 1)]
    return lrs[min(range(len(slopes)), key=lambda j: slopes[j])]


def rule_valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``valley``: a point in the middle third of the longest strictly decreasing run.

    ``run[i]`` is the length of the longest strictly decreasing subsequence ending at ``i``; the
    longest one ends at ``end`` with length ``L`` and is taken to start at ``end - L``; the pick is at
    index ``start + int(L/3) + int(L/6)`` (about the middle of its middle third).
    """
    _check_curve(lrs, losses)
    n = len(losses)
    run = [1] * n
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    start = best_end - run[best_end]
    third = (best_end - start) / 3.0
    idx = max(0, start + int(third) + int(third / 2.0))
    return lrs[min(idx, n - 1)]


def rule_slide(lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15,
               thresh: float = 0.005, adjust_value: float = 1.0) -> float:
    """fastai ``slide``: slide a ``lr_diff``-point window left from the end until the index-gradients
    at its ends agree within ``thresh``; the rate at the window's left end (times ``adjust_value``).
    """
    _check_curve(lrs, losses, 2)
    n = len(losses)
    grad = _gradient(losses)
    r = n - 1
    l = r - lr_diff
    if l < 0:
        return lrs[0] * adjust_value
    pick = lrs[l]
    while l >= 0 and abs(grad[r] - grad[l]) > thresh:
        pick = lrs[l]
        r -= 1
        l -= 1
    return pick * adjust_value


def rule_steepest(lrs: Sequence[float], raw_losses: Sequence[float], smooth_f: Optional[float] = 0.05,
                  diverge_th: Optional[float] = 5.0, skip_start: int = 10, skip_end: int = 5, *,
                  ends: bool = True) -> float:
    """Surmenok / torch-lr-finder ``steepest``: most negative index-gradient of the smoothed losses.

    ``raw_losses`` are the per-step losses; they are smoothed with :func:`ema_plain`, cut where the
    smoothed loss first exceeds ``diverge_th`` times its best so far (that point kept), and the first
    ``skip_start`` and last ``skip_end`` points dropped.  If too few points remain, all are used.

    ``smooth_f=None`` takes the losses as already smoothed and ``diverge_th=None`` skips the cut (as
    for torch-lr-finder's recorded ``history["loss"]``).  ``ends=False`` lets only the interior points
    (central differences) compete, without the one-sided differences at the two ends, and returns the
    middle rate of the whole curve when fewer than three points remain after the skips (the bench's
    ``torch-lr-finder`` selector).
    """
    _check_curve(lrs, raw_losses, 2 if ends else 1)
    sm = list(raw_losses) if smooth_f is None else ema_plain(raw_losses, smooth_f)
    cut = len(sm)
    if diverge_th is not None:
        best = math.inf
        for i, v in enumerate(sm):
            if i > 0 and (not math.isfinite(v) or v > diverge_th * best):
                cut = i + 1
                break
            best = min(best, v)
    lr_c, sm_c = list(lrs[:cut]), sm[:cut]
    n = len(sm_c)
    if not ends:
        if n - skip_start - skip_end < 3:
            return float(lrs[len(lrs) // 2])
        lr_c, sm_c = lr_c[skip_start:n - skip_end], sm_c[skip_start:n - skip_end]
    elif n > skip_start + skip_end + 1:
        lr_c, sm_c = lr_c[skip_start:n - skip_end], sm_c[skip_start:n - skip_end]
    sm_c = [v if math.isfinite(v) else math.inf for v in sm_c]
    g = _gradient(sm_c)
    g = [v if math.isfinite(v) else math.inf for v in g]
    candidates = range(len(g)) if ends else range(1, len(g) - 1)
    return lr_c[min(candidates, key=lambda j: g[j])]


def fastai_rules(lrs: Sequence[float], smoothed: Sequence[float], num_it: int) -> dict:
    """The four fastai suggestions on a recorded ramp (first ``num_it // 10`` and last 5 dropped)."""
    lo, hi = num_it // 10, len(smoothed) - 5
    if hi - lo < 2:  # a very short ramp: keep what there is
        lo, hi = 0, len(smoothed)
    l, s = list(lrs[lo:hi]), [v if math.isfinite(v) else math.inf for v in smoothed[lo:hi]]
    return {"valley": rule_valley(l, s), "steep": rule_steep(l, s), "min_div_10": rule_min_div_10(l, s),
            "slide": rule_slide(l, s)}


# ----------------------------------------------------------------------------- the test
def range_test(model: nn.Module, make_optimizer: Callable, loss_fn: Callable, train_data: Iterable,
               val_data: Optional[Iterable] = None, *, mode: str = "ramp", start_lr: float = 1e-7,
               end_lr: float = 10.0, num_it: int = 100, stop_div: float = 4.0, beta: float = 0.98,
               suggest: Optional[str] = None, steps: int = 20, num: int = 15,
               progress: Optional[bool] = None) -> FinderResult:
    """Classic learning-rate range test, as a baseline for :func:`autostep.find_lr`.

    Parameters
    ----------
    model, make_optimizer, loss_fn, train_data:
        As for :func:`autostep.find_lr`; ``make_optimizer(params, lr)`` is called once (ramp) or once
        per rate (reset).  In the ramp every parameter group's rate is scaled together, so group
        ratios set by ``make_optimizer`` are kept.
    val_data:
        Needed by ``mode="reset"`` (the score of each rate); unused by the ramp, which reads the
        training loss.
    mode:
        ``"ramp"`` (fastai / torch-lr-finder) or ``"reset"`` (Wittmann's reset per rate).
    start_lr, end_lr:
        Span of the ramp, or of the reset grid.
    num_it, stop_div, beta:
        Ramp length, divergence factor on the smoothed loss, EMA factor.
    suggest:
        The rule that becomes ``result.lr``: ramp default ``"valley"`` (fastai's default), reset
        ``"lowest"``.
    steps, num:
        Reset mode: training steps per rate and number of log-spaced rates.
    progress:
        Show a tqdm bar (``None``: when stderr is a terminal).

    The model (parameters, buffers, gradients, modes) and the generators are restored at the end,
    also when something raises.  Returns a :class:`~autostep.finder.result.FinderResult` with
    ``window=None`` and ``method`` ``"range_test"`` or ``"reset_per_rate"``.
    """
    if mode not in ("ramp", "reset"):
        raise ValueError(f"mode must be 'ramp' (single exponential ramp) or 'reset' (reset per rate), "
                         f"got {mode!r}")
    start_lr = V.positive("start_lr", start_lr)
    end_lr = V.positive("end_lr", end_lr)
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be larger than start_lr, got start_lr={start_lr!r}, "
                         f"end_lr={end_lr!r}")
    if mode == "reset":
        return _reset_test(model, make_optimizer, loss_fn, train_data, val_data, start_lr, end_lr,
                           steps, num, suggest, progress)
    V.positive_int("num_it", num_it, 2)
    stop_div = V.greater_than("stop_div", stop_div, 1.0)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    suggest = "valley" if suggest is None else suggest
    if suggest not in RAMP_RULES:
        raise ValueError(f"suggest must be one of {RAMP_RULES} for mode='ramp', got {suggest!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(make_optimizer) or not callable(loss_fn):
        raise TypeError("make_optimizer(params, lr) and loss_fn(model, batch) must be callables")
    V.reiterable("train_data", train_data)

    state, rng = ModelState(model), RNGSnapshot()
    params = list(model.parameters())
    lrs, raw, smoothed, trials = [], [], [], []
    bar = progress_bar(progress, num_it, "range_test")
    try:
        for p in params:
            p.grad = None
        opt = make_optimizer(params, start_lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"make_optimizer(params, lr) returned {type(opt).__name__}; it must "
                            "return a torch.optim.Optimizer")
        base = [g["lr"] / start_lr for g in opt.param_groups]
        model.train()
        batches = cycle_batches(train_data)
        avg, best = 0.0, math.inf
        for i in range(num_it):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_it - 1))
            for g, b in zip(opt.param_groups, base):
                g["lr"] = lr * b
            opt.zero_grad(set_to_none=True)
            loss = V.check_loss(loss_fn(model, next(batches)), "on a training batch")
            value = float(loss.detach())
            lrs.append(lr)
            raw.append(value)
            avg = beta * avg + (1.0 - beta) * value
            sm = avg / (1.0 - beta ** (i + 1))
            smoothed.append(sm)
            trials.append(Trial(lr, value, (value,), 1, not math.isfinite(value)))
            if bar is not None:
                bar.update(1)
            if not math.isfinite(sm) or (i > 0 and sm > stop_div * best):
                break
            best = min(best, sm)
            loss.backward()
            opt.step()
    finally:
        if bar is not None:
            bar.close()
        state.restore(grads=True)
        rng.restore()
    if len(lrs) < 2:
        raise ValueError(f"the range test stopped after {len(lrs)} step: the loss was not finite at "
                         f"start_lr={start_lr}; check the model and data")
    picks = fastai_rules(lrs, smoothed, num_it)
    picks["steepest"] = rule_steepest(lrs, raw)
    return FinderResult(lr=picks[suggest], window=None, picks=picks, pick=suggest, trials=trials,
                        spread={}, steps_spent=len(lrs), method="range_test",
                        curve={"lrs": lrs, "raw": raw, "smoothed": smoothed},
                        info={"stopped_early": len(lrs) < num_it, "num_it": num_it})


def _reset_test(model, make_optimizer, loss_fn, train_data, val_data, start_lr, end_lr, steps, num,
                suggest, progress) -> FinderResult:
    V.positive_int("num", num, 2)
    if val_data is None:
        raise ValueError("mode='reset' scores each rate on validation data: pass val_data")
    suggest = "lowest" if suggest is None else suggest
    if suggest != "lowest":
        raise ValueError(f"suggest must be 'lowest' for mode='reset', got {suggest!r}")
    lrs = [start_lr * (end_lr / start_lr) ** (i / (num - 1)) for i in range(num)]
    trials = []
    bar = progress_bar(progress, num * steps, "range_test")
    with TrialRunner(model, make_optimizer, loss_fn, train_data, val_data, steps) as runner:
        try:
            for lr in lrs:
                loss, ran, div = runner.run(lr)
                trials.append(Trial(lr, loss, (loss,), ran, div))
                if bar is not None:
                    bar.update(ran)
        finally:
            if bar is not None:
                bar.close()
    best = min(trials, key=lambda t: t.val_loss)
    curve = analyze(lrs, [t.val_loss for t in trials], smooth_decades=0.0)
    return FinderResult(lr=best.lr, window=None, picks={"lowest": best.lr}, pick="lowest",
                        trials=trials, spread={}, steps_spent=sum(t.steps for t in trials),
                        method="reset_per_rate", curve=curve, info={"steps": steps})
