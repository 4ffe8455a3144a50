"""Learning-rate search by step sampling (``lr-step-sampling-search.txt``), with trials that reset.

:func:`find_lr` trains a few steps at each candidate learning rate, scores the model on validation
data, puts everything back, and builds the log-LR/loss curve from which :mod:`.curve` reads the viable
window and the three picks.  Candidates come from a half-decade grid that is extended when the minimum
lands on an edge (or the small-lr end is not yet on the plateau), then refined at the log-midpoints
around each point of interest until each is known within ``tol`` decades (section 3.3).

Reset (the paper's reason for existing): every trial starts from the same parameters and buffers, a
fresh optimizer (so the same optimizer state), the same batches in the same order, and the same
generator state, so two trials differ only in the learning rate.

Where the parts live: :class:`~.trials.TrialRunner` runs one trial (:mod:`.trials`),
:class:`~.executors.TrialEvaluator` runs many, sequentially or in parallel (:mod:`.executors`),
:func:`~.refine.search_curve` chooses the rates (:mod:`.refine`), :mod:`.curve` reads the window
and picks, :mod:`.peak` is the schedule-aware search, and this module holds :func:`find_lr`.

Distributed
-----------
Under ``torch.distributed`` call :func:`find_lr` on every rank (each with its own data shard).  The
training loss that decides divergence and every validation loss are averaged over ranks with
:class:`autostep.distributed.Reducer`, so all ranks stop at the same step, evaluate the same rates
and return the same result.  Executors cannot be combined with distributed runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Callable, Optional

from torch import nn

from .. import _validate as V
from .._progress import progress_bar
from ..distributed import Reducer
from .curve import PICKS, analyze
from .executors import TrialEvaluator
from .peak import PEAK_SCALE, SCHEDULES, peak_search, trial_factor, trial_steps
from .refine import DEFAULT_LR_RANGE, search_curve
from .result import FinderResult
from .trials import TrialRunner

__all__ = ["find_lr", "NoViableRateError"]


class NoViableRateError(ValueError):
    """No learning rate trained without diverging; ``.result`` holds the search's trials.

    Raised by :func:`find_lr` instead of returning a rate whose trial diverged.
    """

    def __init__(self, message: str, result: "FinderResult") -> None:
        super().__init__(message)
        self.result = result


def _normalise_seeds(seeds) -> list:
    if seeds is None:
        return [None]
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be None, a count or a list of integer seeds, got {seeds!r}")
    if isinstance(seeds, int):
        V.positive_int("seeds", seeds, 1, " (the number of repetitions of each trial)")
        return list(range(seeds))
    try:
        out = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be None, a count or a list of integer seeds, got "
                        f"{type(seeds).__name__} {seeds!r}") from None
    if not out or any(isinstance(s, bool) or not isinstance(s, int) for s in out):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return out


def find_lr(model: nn.Module, make_optimizer: Callable, loss_fn: Callable, train_data: Iterable,
            val_data: Iterable, steps: int = 20, *, lr_range=DEFAULT_LR_RANGE, tol: float = 0.125,
            pick: str = "log_midpoint", seeds=None, smooth_decades: float = 0.15, diverge: float = 4.0,
            max_rounds: int = 10, max_extend: int = 6, eval_mode: bool = True, executor=None,
            workers: int = 2, progress: Optional[bool] = None,
            reducer: Optional[Reducer] = None, schedule: Optional[str] = None,
            total_steps: Optional[int] = None, budget: Optional[int] = None,
            smooth: Optional[float] = None) -> FinderResult:
    """Search the learning rate by step sampling with reset (``lr-step-sampling-search.txt``).

    Parameters
    ----------
    model:
        The ``nn.Module`` to tune for.  It is left exactly as it was (parameters, buffers, gradients,
        train/eval mode), also when a trial raises; so are the torch generators.
    make_optimizer:
        ``make_optimizer(params, lr) -> torch.optim.Optimizer``, called afresh for every trial (so
        every trial starts from the same optimizer state).  ``params`` is the list of the model's
        parameters; to use parameter groups, build them from the model in the callable and scale
        their rates from ``lr``.
    loss_fn:
        ``loss_fn(model, batch) -> scalar tensor``; used on training and validation batches.
    train_data, val_data:
        Re-iterables of batches (a list, a DataLoader, ...).  A trial cycles ``train_data`` for
        ``steps`` steps and is scored by the mean ``loss_fn`` over ``val_data``.
    steps:
        Training steps per trial (the paper uses 20).
    lr_range:
        Span of the initial half-decade grid; extended automatically by up to ``max_extend``
        half-decades on each side when the curve needs it.
    tol:
        Refinement stops when every point of interest has evaluated neighbours within ``tol``
        decades (0.125 = a factor of 1.33).
    pick:
        Which of ``"log_midpoint"`` (method 1, default), ``"half_drop"`` (method 2) or
        ``"steepest"`` (method 3) becomes ``result.lr``.
    seeds:
        ``None``: one run per rate, replaying the caller's generator state and data order.  An
        integer ``n`` or a list of seeds: each rate is trained once per seed (``torch.manual_seed``,
        and a seed-permuted order of a list of batches); decisions use the mean curve and
        ``result.spread`` gives each pick's range over the seeds' own curves.
    smooth_decades:
        Bandwidth (decades) of the local quadratic fits behind derivatives and curvature;
        0 = the paper's plain finite differences (see :mod:`autostep.finder.curve`).
        ``smooth=`` is its old name, still accepted with a ``DeprecationWarning`` (in SALSA
        ``smooth`` is an EMA factor, a different thing).
    diverge:
        A trial whose training loss is non-finite or exceeds ``diverge`` times its first loss stops
        early and counts as a high loss.
    eval_mode:
        Score with ``model.eval()`` (dropout off, BatchNorm running statistics).
    executor:
        ``None`` (sequential), ``"process"`` (a pool of ``workers`` CPU processes) or a
        ``concurrent.futures``-style executor (see the module documentation for Ray/Optuna).
    progress:
        Show a tqdm bar (``None``: when stderr is a terminal).
    reducer:
        The :class:`~autostep.distributed.Reducer` used under ``torch.distributed``.
    schedule:
        ``None`` (default): the paper's search and picks, for a rate to train with as it is.
        ``"cosine"`` (warm-up + cosine), ``"linear"`` (warm-up + linear decay to zero) or
        ``"constant"``: return the *peak* rate for training with that schedule, corrected for the
        short-horizon bias of few-step trials: every trial runs the schedule compressed into its
        steps, the best rate is refined by bisection, and scaled by a per-schedule factor
        calibrated on the benchmark's problems (:mod:`autostep.finder.peak`,
        ``benchmarks/finder_calibration.md``).  ``result.pick`` is then ``"peak"``;
        ``result.picks`` also holds ``"best"`` (before scaling) and the paper's three picks of
        the sparse curve.
    total_steps:
        Length of the training run the rate is for; sets the default ``budget`` to 10 % of it.
    budget:
        Most training steps all trials together may take (every seed counted).  Trials are then
        shortened so that about five fit (at least 2 steps, at most ``steps``), and the search
        stops, answering from the trials it has, when the next trial would not fit.
        ``result.steps_spent <= budget`` always.

    Returns
    -------
    FinderResult
        ``.lr``, ``.window``, ``.picks``, ``.trials``, ``.spread``, ``.steps_spent``, ``.plot(path)``.

    Raises
    ------
    NoViableRateError
        When every trial diverged (or the lowest loss belongs to a diverged trial): no rate is
        returned that diverged.  The exception's ``.result`` holds the trials for inspection.
    """
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    seed_list = _normalise_seeds(seeds)
    V.increasing_pair("lr_range", lr_range)
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be None or one of {SCHEDULES}, got {schedule!r}")
    if total_steps is not None:
        V.positive_int("total_steps", total_steps, 1, " (the length of the training run)")
        if budget is None:
            budget = max(total_steps // 10, 4 * len(seed_list))
    if budget is not None:
        V.positive_int("budget", budget, 4 * len(seed_list),
                   f" (at least two trials of two steps for each of the {len(seed_list)} seeds)")
        V.positive_int("steps", steps, 1, " (training steps per trial; the paper uses 20)")
        steps = trial_steps(budget, steps, len(seed_list))
    smooth_decades = V.renamed_keyword("find_lr", "smooth", smooth, "smooth_decades",
                                       smooth_decades, 0.15)
    smooth_decades = V.nonnegative("smooth_decades", smooth_decades,
                                   " (bandwidth in decades; 0 disables smoothing)")
    V.positive_int("workers", workers, 1)
    reducer = reducer or Reducer()
    if executor is not None and reducer.active:
        raise ValueError("executor cannot be used under torch.distributed: every rank already runs "
                         "the trials; pass executor=None")
    if executor is not None and executor != "process" and not hasattr(executor, "submit"):
        raise TypeError(f"executor must be None, 'process' or an object with submit(fn, *args) "
                        f"(e.g. a concurrent.futures executor), got {executor!r}")
    if executor == "process" and any(p.is_cuda for p in model.parameters()):
        raise ValueError("executor='process' runs CPU workers; for a model on the GPU use "
                         "executor=None (or one process per GPU through your own executor)")
    lr_factor = None if schedule is None else functools.partial(trial_factor, schedule)
    runner = TrialRunner(model, make_optimizer, loss_fn, train_data, val_data, steps,
                         diverge=diverge, eval_mode=eval_mode, reducer=reducer, lr_factor=lr_factor)
    payload = None
    if executor is not None:
        payload = dict(model=model, make_optimizer=make_optimizer, loss_fn=loss_fn,
                       train_data=train_data, val_data=val_data, steps=steps, diverge=diverge,
                       eval_mode=eval_mode, rng_state=runner._rng.cpu, lr_factor=lr_factor)
    bar = progress_bar(progress, None, "find_lr")
    evaluator = None
    try:
        evaluator = TrialEvaluator(runner, payload, seed_list, executor, workers, bar, budget)
        if schedule is not None:
            return _find_peak(runner, evaluator, lr_range, tol, smooth_decades, schedule, budget,
                              total_steps)
        points, analysis, info = search_curve(
            evaluator, lr_range, tol=tol, smooth_decades=smooth_decades, max_rounds=max_rounds,
            max_extend=max_extend, width=evaluator.width)
    finally:
        if evaluator is not None:
            evaluator.shutdown()
        if bar is not None:
            bar.close()
        runner.close()
    spread = {}
    if len(seed_list) > 1:
        xs = sorted(points)
        per_seed = []
        for s in range(len(seed_list)):
            a = analyze([10.0 ** x for x in xs], [points[x][s] for x in xs], smooth_decades)
            per_seed.append(a.picks)
        spread = {name: (min(p[name] for p in per_seed), max(p[name] for p in per_seed))
                  for name in PICKS}
    picks = analysis.picks
    info["evaluations"] = len(evaluator.trials) * len(seed_list)
    info["seeds"] = seed_list
    info["trial_steps"] = steps
    info["budget"] = budget
    result = FinderResult(lr=picks[pick], window=analysis.window, picks=picks, pick=pick,
                          trials=evaluator.trials, spread=spread, steps_spent=evaluator.steps,
                          method="step_sampling", curve=analysis, info=info)
    _check_viable(result)
    return result


def _find_peak(runner: TrialRunner, evaluator: TrialEvaluator, lr_range, tol: float,
               smooth_decades: float, schedule: str, budget: Optional[int],
               total_steps: Optional[int]) -> FinderResult:
    """The schedule-aware search (:mod:`autostep.finder.peak`): the peak rate for ``schedule``."""
    y0 = runner.initial_loss()

    def evaluate(lr: float) -> float:
        losses = evaluator([lr])[0]
        return math.inf if any(not math.isfinite(v) for v in losses) else sum(losses) / len(losses)

    best, points, info = peak_search(evaluate, y0, V.increasing_pair("lr_range", lr_range), tol=tol)
    xs = sorted(points)
    analysis = analyze([10.0 ** x for x in xs], [points[x] for x in xs], smooth_decades, y_top=y0)
    scale = PEAK_SCALE[schedule]
    lr = math.nan if best is None else best * scale
    picks = dict(analysis.picks, best=math.nan if best is None else best, peak=lr)
    info.update(schedule=schedule, scale=scale, raw_lr=best, total_steps=total_steps,
                budget=budget, trial_steps=runner.steps, seeds=evaluator.seeds,
                evaluations=len(evaluator.trials) * len(evaluator.seeds), rounds=0)
    info["notes"].extend(analysis.notes)
    result = FinderResult(lr=lr, window=analysis.window, picks=picks, pick="peak",
                          trials=evaluator.trials, spread={}, steps_spent=evaluator.steps,
                          method="step_sampling", curve=analysis, info=info)
    _check_viable(result)  # raises when every trial diverged
    return result


def _check_viable(result: FinderResult) -> None:
    """Raise :class:`NoViableRateError` when no trial converged or the best one diverged."""
    trials = result.trials
    ok = [t for t in trials if not t.diverged]
    best = result.window[1]
    at_best = [t for t in trials if abs(math.log10(t.lr) - math.log10(best)) < 1e-9]
    lrs = sorted(t.lr for t in trials)
    if not ok:
        raise NoViableRateError(
            f"find_lr: every trial diverged ({len(trials)} rates from {lrs[0]:.3g} to "
            f"{lrs[-1]:.3g}), so no learning rate is viable; check the model and loss_fn (a loss "
            "that grows from the first step), lower lr_range, or raise diverge= (now the threshold "
            "on the loss relative to the first step)", result)
    if at_best and all(t.diverged for t in at_best):
        raise NoViableRateError(
            f"find_lr: the lowest loss is at {best:.3g}, a rate whose trial diverged; only "
            f"{len(ok)} of {len(trials)} rates trained without diverging, which is too few to "
            "read a window; widen lr_range towards smaller rates or use more steps", result)
