"""Learning-rate search by step sampling (``lr-step-sampling-search.txt``), with trials that reset.

:func:`find_lr` trains a few steps at each candidate learning rate, scores the model on validation
data, puts everything back, and builds the log-LR/loss curve from which :mod:`.curve` reads the viable
window and the three picks.  Candidates come from a half-decade grid that is extended when the minimum
lands on an edge (or the small-lr end is not yet on the plateau), then refined at the log-midpoints
around each point of interest until each is known within ``tol`` decades (section 3.3).

Reset (the paper's reason for existing): every trial starts from the same parameters and buffers, a
fresh optimizer (so the same optimizer state), the same batches in the same order, and the same
generator state, so two trials differ only in the learning rate.  :class:`TrialRunner` does that and
is usable on its own.

Parallel trials
---------------
``executor=None`` runs trials one after another in this process.  ``executor="process"`` starts a
``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes (one torch thread each); the
model, data and callables are handed to each worker once, at start-up (fork), so lambdas work.
Any object with a ``concurrent.futures``-style ``submit(fn, *args)`` returning a future with
``result()`` is accepted as well; then ``fn``, the model, data and callables are pickled with every
trial, so they must be picklable (module-level functions, no lambdas).  Each such trial works on its
own copy of the model; a thread pool therefore works too, but threads share torch's global
generator, so use processes when dropout or a shuffling DataLoader draws random numbers.  Workers run
one torch thread each, and reductions (e.g. BatchNorm statistics) can round differently with another
thread count, so parallel and sequential losses agree bit for bit only at equal thread counts.  That is how to use a
cluster, e.g. Ray, without autostep depending on it::

    import ray

    class RayExecutor:                      # a 6-line adapter, not part of autostep
        _max_workers = 8                    # how many trials to run at once
        def submit(self, fn, *args):
            ref = ray.remote(fn).remote(*args)
            class Future:
                def result(self):
                    return ray.get(ref)
            return Future()

    autostep.find_lr(model, make_opt, loss_fn, train, val, executor=RayExecutor())

For Optuna, wrap :class:`TrialRunner` in an objective (``lambda t: runner.run(t.suggest_float("lr",
1e-5, 1, log=True))[0]``) to let a sampler choose rates; the window and picks can then be read from
the study's trials with :func:`autostep.finder.curve.analyze`.

Distributed
-----------
Under ``torch.distributed`` call :func:`find_lr` on every rank (each with its own data shard).  The
training loss that decides divergence and every validation loss are averaged over ranks with
:class:`autostep.distributed.Reducer`, so all ranks stop at the same step, evaluate the same rates
and return the same result.  Executors cannot be combined with distributed runs.
"""

from __future__ import annotations

import copy
import functools
import math
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Iterator
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .._outputs import check_not_meta
from .._progress import progress_bar
from .._closure import RNGSnapshot
from ..distributed import Reducer
from .curve import PICKS, analyze
from .peak import PEAK_SCALE, SCHEDULES, BudgetExhausted, peak_search, trial_factor, trial_steps
from .result import FinderResult, Trial

__all__ = ["find_lr", "TrialRunner", "search_curve", "DEFAULT_LR_RANGE", "NoViableRateError"]

#: the coarse grid's default span (extended automatically when the curve needs it)
DEFAULT_LR_RANGE = (1e-5, 1.0)
_GRID = 0.5  # half a decade, as in the paper


class NoViableRateError(ValueError):
    """No learning rate trained without diverging; ``.result`` holds the search's trials.

    Raised by :func:`find_lr` instead of returning a rate whose trial diverged.
    """

    def __init__(self, message: str, result: "FinderResult") -> None:
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------- validation helpers
def _check_number(name: str, value, *, low: float = 0.0, strict: bool = True, hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    if (value <= low) if strict else (value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}{hint}")
    return float(value)


def _check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def _check_reiterable(name: str, data) -> None:
    if data is None:
        raise TypeError(f"{name} is None; pass a re-iterable of batches (a list or a DataLoader)")
    # never call iter() here: creating a DataLoader iterator draws from the global generator
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a re-iterable of batches (a list or a DataLoader), got "
                        f"{type(data).__name__}")
    if isinstance(data, Iterator):
        raise TypeError(f"{name} is a one-shot iterator ({type(data).__name__}); every trial must "
                        "see the same batches, so pass something that can be iterated again, e.g. "
                        f"list({name}) or a DataLoader")


def _check_lr_range(lr_range) -> tuple:
    try:
        lo, hi = lr_range
    except (TypeError, ValueError):
        raise ValueError(f"lr_range must be a pair (min_lr, max_lr), got {lr_range!r}") from None
    lo = _check_number("lr_range[0]", lo)
    hi = _check_number("lr_range[1]", hi)
    if not hi > lo:
        raise ValueError(f"lr_range must be increasing (min_lr < max_lr), got {lr_range!r}")
    return lo, hi


def _normalise_seeds(seeds) -> list:
    if seeds is None:
        return [None]
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be None, a count or a list of integer seeds, got {seeds!r}")
    if isinstance(seeds, int):
        _check_int("seeds", seeds, 1, " (the number of repetitions of each trial)")
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


def _as_loss(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss_fn(model, batch) returned {type(value).__name__} {value!r} {where}; "
                        "it must return the loss as a scalar torch.Tensor (not loss.item())")
    if value.numel() != 1:
        raise TypeError(f"loss_fn(model, batch) returned a tensor of shape {tuple(value.shape)} "
                        f"{where}; it must return a scalar loss, e.g. reduce it with .mean()")
    return value


# ----------------------------------------------------------------------------- model state
class _ModelState:
    """Parameters, buffers, gradients and train/eval flags of a model, restorable bit for bit.

    Values are written back in place into the original tensor objects (and an object replaced during
    a trial is put back), so references held elsewhere -- e.g. by the user's optimizer -- stay valid.
    Buffers are copied back unconditionally: BatchNorm updates its statistics without bumping the
    version counter.
    """

    def __init__(self, model: nn.Module) -> None:
        self.entries = []
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        self.entries.append((store, name, t, t.detach().clone()))
        self.grads = [(p, p.grad) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]

    @torch.no_grad()
    def restore(self, grads: bool = False) -> None:
        for store, name, t, saved in self.entries:
            if store.get(name) is not t:
                store[name] = t
            t.copy_(saved)
        for m, training in self.modes:
            m.training = training
        if grads:
            for p, g in self.grads:
                p.grad = g


class TrialRunner:
    """Runs trials ``(lr, seed) -> (val_loss, steps_run, diverged)`` that all start from the same state.

    On creation it snapshots the model (parameters, buffers, gradients, modes) and the CPU/CUDA
    generators; after every trial -- also one that raises -- the model is restored bit for bit;
    :meth:`close` (or leaving the ``with`` block) also restores the gradients and the generators.

    A trial: seed the generators (``seed=None`` replays the snapshot, an integer calls
    ``torch.manual_seed(seed)``), build ``make_optimizer(params, lr)``, run ``steps`` training steps
    in train mode over ``train_data`` (cycled if shorter; with an integer seed a list/tuple of batches
    is also visited in a seed-permuted order, a DataLoader reshuffles from the seeded generator), then
    average ``loss_fn`` over ``val_data`` under ``torch.no_grad()`` (in eval mode when ``eval_mode``).
    A training loss that is non-finite or above ``diverge`` times the first step's loss ends the trial
    early: it returns ``(inf, steps_run, True)``.  ``lr_factor(step, steps)``, when given, multiplies
    every group's rate at each step (a schedule compressed into the trial).
    """

    def __init__(self, model: nn.Module, make_optimizer: Callable, loss_fn: Callable,
                 train_data: Iterable, val_data: Iterable, steps: int = 20, *,
                 diverge: float = 4.0, eval_mode: bool = True, reducer: Optional[Reducer] = None,
                 rng_state: Optional[torch.Tensor] = None,
                 lr_factor: Optional[Callable[[int, int], float]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(make_optimizer):
            raise TypeError("make_optimizer must be a callable (params, lr) -> torch.optim.Optimizer, "
                            f"got {type(make_optimizer).__name__}; e.g. "
                            "lambda params, lr: torch.optim.Adam(params, lr=lr)")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be a callable (model, batch) -> scalar loss tensor, got "
                            f"{type(loss_fn).__name__}")
        _check_reiterable("train_data", train_data)
        _check_reiterable("val_data", val_data)
        self.steps = _check_int("steps", steps, 1, " (training steps per trial; the paper uses 20)")
        self.diverge = _check_number("diverge", diverge, low=1.0,
                                     hint=" (a trial stops when its loss exceeds diverge x the first loss)")
        check_not_meta(model.parameters(), "find_lr")
        self.model, self.make_optimizer, self.loss_fn = model, make_optimizer, loss_fn
        self.train_data, self.val_data = train_data, val_data
        self.eval_mode = bool(eval_mode)
        self.lr_factor = lr_factor
        self.reducer = reducer or Reducer()
        self._entry_rng = RNGSnapshot()
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        self._rng = RNGSnapshot()
        self._state = _ModelState(model)
        self._params = [p for p in model.parameters()]
        self.trials_run = 0

    # ------------------------------------------------------------------ context management
    def __enter__(self) -> "TrialRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Put back the model (parameters, buffers, gradients, modes) and the generators."""
        self._state.restore(grads=True)
        self._entry_rng.restore()

    # ------------------------------------------------------------------ one trial
    def _batches(self, seed: Optional[int]):
        data = self.train_data
        if seed is not None and isinstance(data, (list, tuple)) and len(data) > 1:
            g = torch.Generator().manual_seed(int(seed))
            data = [data[i] for i in torch.randperm(len(data), generator=g).tolist()]
        return _cycle(data)

    def _reduce(self, value: float, device) -> float:
        if self.reducer.active:
            return self.reducer.mean([value], device)[0]
        return value

    def run(self, lr: float, seed: Optional[int] = None) -> tuple:
        """Train ``steps`` steps at ``lr`` from the saved state, score on ``val_data``, restore.

        Returns ``(val_loss, steps_run, diverged)``; ``val_loss`` is ``inf`` for a diverged trial.
        """
        lr = _check_number("lr", lr)
        if seed is None:
            self._rng.restore()
        else:
            torch.manual_seed(int(seed))
        for p in self._params:
            p.grad = None
        try:
            return self._run(lr, seed)
        finally:
            self._state.restore()
            for p in self._params:
                p.grad = None
            self.trials_run += 1

    def _run(self, lr: float, seed: Optional[int]) -> tuple:
        opt = self.make_optimizer(self._params, lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"make_optimizer(params, lr) returned {type(opt).__name__}; it must "
                            "return a torch.optim.Optimizer, e.g. torch.optim.SGD(params, lr=lr)")
        base = [g["lr"] for g in opt.param_groups]
        self.model.train()
        batches = self._batches(seed)
        ref = None
        steps_run = 0
        for step in range(self.steps):
            batch = next(batches)
            if self.lr_factor is not None:  # a schedule inside the trial (find_lr(schedule=...))
                factor = self.lr_factor(step, self.steps)
                for g, lr0 in zip(opt.param_groups, base):
                    g["lr"] = lr0 * factor
            opt.zero_grad(set_to_none=True)
            loss = _as_loss(self.loss_fn(self.model, batch), "on a training batch")
            value = self._reduce(float(loss.detach()), loss.device)
            steps_run += 1
            if ref is None:
                if not math.isfinite(value):
                    raise ValueError(f"the training loss at the initial parameters is {value}, before "
                                     "any step was taken; check the data and the model for NaN/inf")
                ref = value
            if not math.isfinite(value) or value > ref + (self.diverge - 1.0) * abs(ref):
                return math.inf, steps_run, True
            if not loss.requires_grad:
                raise ValueError("the training loss does not require grad (computed under "
                                 "torch.no_grad(), detached, or no parameter takes part in it); "
                                 "compute it from the model's output without .detach()")
            loss.backward()
            opt.step()
        val = self.validate()
        if not math.isfinite(val):
            return math.inf, steps_run, True
        return val, steps_run, False

    def initial_loss(self) -> float:
        """The validation loss of the untouched model (the loss of "learning nothing")."""
        try:
            value = self.validate()
        finally:
            self._state.restore()
        if not math.isfinite(value):
            raise ValueError(f"the validation loss at the initial parameters is {value}, before any "
                             "step was taken; check the data and the model for NaN/inf")
        return value

    @torch.no_grad()
    def validate(self) -> float:
        """Mean of ``loss_fn`` over the batches of ``val_data`` at the current parameters."""
        if self.eval_mode:
            self.model.eval()
        total, count, device = 0.0, 0, "cpu"
        for batch in self.val_data:
            loss = _as_loss(self.loss_fn(self.model, batch), "on a validation batch")
            total += float(loss)
            device = loss.device
            count += 1
        if count == 0:
            raise ValueError("val_data yielded no batch; pass at least one validation batch")
        value = self._reduce(total / count, device)
        return value if math.isfinite(value) else math.inf


# ----------------------------------------------------------------------------- executors
_WORKER: Optional[TrialRunner] = None


def _worker_init(payload: dict, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = TrialRunner(**payload)


def _worker_run(lr: float, seed) -> tuple:
    assert _WORKER is not None
    return _WORKER.run(lr, seed)


def remote_trial(payload: dict, lr: float, seed) -> tuple:
    """Run one trial from a self-contained payload (what a user-supplied executor receives).

    The model is deep-copied first, so an executor that does not pickle (threads) never lets two
    trials share it.  Threads still share torch's global generator: use processes for models or data
    loaders that draw random numbers.
    """
    payload = dict(payload, model=copy.deepcopy(payload["model"]))
    with TrialRunner(**payload) as runner:
        return runner.run(lr, seed)


class _Evaluator:
    """Evaluates lists of learning rates over all seeds, sequentially or through an executor."""

    def __init__(self, runner: TrialRunner, payload: dict, seeds: list, executor, workers: int,
                 bar, budget: Optional[int] = None) -> None:
        self.runner, self.seeds, self.bar, self.budget = runner, seeds, bar, budget
        self.trials: list = []
        self.steps = 0
        self._own = None
        self.executor = None
        self.width = 1
        if executor is None:
            return
        if executor == "process":
            self._own = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                            initargs=(payload, 1))
            self.executor, self.width = self._own, workers
            self._submit = lambda lr, seed: self.executor.submit(_worker_run, lr, seed)
        elif hasattr(executor, "submit"):
            self.executor = executor
            self.width = int(getattr(executor, "_max_workers", 0) or 4)
            self._submit = lambda lr, seed: self.executor.submit(remote_trial, payload, lr, seed)
        else:
            raise TypeError(f"executor must be None, 'process' or an object with submit(fn, *args) "
                            f"(e.g. a concurrent.futures executor), got {executor!r}")

    def shutdown(self) -> None:
        if self._own is not None:
            self._own.shutdown(wait=True, cancel_futures=True)

    def __call__(self, lrs: Sequence[float]) -> list:
        """Per-seed losses of each rate; raises :class:`BudgetExhausted` (with the results of the
        rates that fitted) when the step budget cannot pay for all of them at full length."""
        requested = list(lrs)
        if self.budget is not None:
            cost = self.runner.steps * len(self.seeds)
            lrs = requested[:max(0, (self.budget - self.steps) // cost)]
        out = self._evaluate(lrs) if lrs else []
        if len(lrs) < len(requested):
            raise BudgetExhausted(out)
        return out

    def _evaluate(self, lrs: Sequence[float]) -> list:
        jobs = [(lr, s) for lr in lrs for s in self.seeds]
        if self.executor is None:
            results = []
            for lr, s in jobs:
                results.append(self.runner.run(lr, s))
                self._tick(lr, results[-1][1])
        else:
            futures = [self._submit(lr, s) for lr, s in jobs]
            results = []
            for (lr, _), f in zip(jobs, futures):
                results.append(tuple(f.result()))
                self._tick(lr, results[-1][1])
        out = []
        k = len(self.seeds)
        for i, lr in enumerate(lrs):
            chunk = results[i * k:(i + 1) * k]
            losses = tuple(r[0] for r in chunk)
            steps = sum(r[1] for r in chunk)
            diverged = any(r[2] for r in chunk)
            mean = math.inf if diverged else sum(losses) / k
            self.trials.append(Trial(float(lr), mean, losses, steps, diverged))
            self.steps += steps
            out.append(losses)
        return out

    def _tick(self, lr: float, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix_str(f"lr={lr:.3g}", refresh=False)


def _cycle(data):
    """Batches of the re-iterable ``data``, round after round, forever (refuses empty data)."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batch; pass at least one batch")


# ----------------------------------------------------------------------------- the search
def _key(x: float) -> float:
    return round(x, 9)


def _refine(run, mean_curve, points, info, lo, hi, tol, smooth, max_rounds, max_extend, plateau,
            width, patience) -> None:
    """The coarse grid and the refinement rounds of :func:`search_curve` (fills ``points``)."""
    lx, hx = math.log10(lo), math.log10(hi)
    n = int(math.floor((hx - lx) / _GRID + 1e-9))
    grid = [lx + _GRID * i for i in range(n + 1)]
    if hx - grid[-1] > 1e-9:
        grid.append(hx)
    run_of_div = 0
    for start in range(0, len(grid), max(1, width)):
        chunk = grid[start:start + max(1, width)]
        run(chunk)
        for x in chunk:
            div = all(not math.isfinite(v) for v in points[_key(x)])
            run_of_div = run_of_div + 1 if div else 0
        if run_of_div >= patience:
            info["skipped"] = len(grid) - start - len(chunk)
            break

    xs, ys = mean_curve()
    analysis = analyze([10.0 ** x for x in xs], ys, smooth)
    left_bound, right_bound = lx - _GRID * max_extend, hx + _GRID * max_extend
    for _ in range(max_rounds):
        new = []
        xs = analysis.x
        y = analysis.y
        last_div = not math.isfinite(ys[-1])
        if analysis.i_min == len(xs) - 1 and not last_div and xs[-1] + _GRID <= right_bound + 1e-9:
            new.append(xs[-1] + _GRID)
            info["extended_right"] += 1
        if len(xs) >= 2 and xs[0] - _GRID >= left_bound - 1e-9:
            drop = y[0] - min(y)
            if analysis.i_min == 0 or (y[0] - y[1]) > plateau * drop:
                new.append(xs[0] - _GRID)
                info["extended_left"] += 1
        for name, (px, is_point) in analysis.points_of_interest().items():
            left = [x for x in xs if x < px - 1e-9]
            right = [x for x in xs if x > px + 1e-9]
            if is_point:
                if left and px - left[-1] > tol + 1e-9:
                    new.append((px + left[-1]) / 2)
                if right and right[0] - px > tol + 1e-9:
                    new.append((px + right[0]) / 2)
            elif left and right and right[0] - left[-1] > tol + 1e-9:
                new.append((left[-1] + right[0]) / 2)
        new = sorted({_key(x) for x in new} - set(points))
        if not new:
            break
        info["rounds"] += 1
        run(new)
        xs_, ys = mean_curve()
        analysis = analyze([10.0 ** x for x in xs_], ys, smooth)
    else:
        info["notes"].append(f"stopped after max_rounds={max_rounds} rounds of refinement")


def search_curve(evaluate: Callable[[list], list], lr_range=DEFAULT_LR_RANGE, *, tol: float = 0.125,
                 smooth: float = 0.15, max_rounds: int = 10, max_extend: int = 6,
                 plateau: float = 0.05, width: int = 1, patience: int = 2) -> tuple:
    """The adaptive evaluation of section 3.3 over any ``evaluate(lrs) -> [per-seed losses]``.

    1. A coarse grid at half-decade spacing over ``lr_range``, evaluated from small to large rates in
       chunks of ``width``; once ``patience`` consecutive rates have diverged (all losses infinite)
       the larger rates are skipped.
    2. Rounds of: analyse the mean curve; extend by half a decade to the right when the minimum is the
       largest rate, to the left when the minimum is the smallest rate or the small-lr end is not yet
       flat (its first step down exceeds ``plateau`` of the total drop), at most ``max_extend`` points
       per side; add the log-midpoint between each point of interest (``max_lr``, ``min_lr``,
       ``half_drop``, ``steepest``) and each neighbour farther than ``tol`` decades (the bracketing
       pair for the interpolated ``half_drop``).  Stop when nothing is added or after ``max_rounds``.

    Returns ``(points, analysis, info)``: ``points`` maps log10(lr) to the tuple of per-seed losses,
    ``analysis`` is the :class:`~autostep.finder.curve.CurveAnalysis` of the mean curve.
    """
    lo, hi = _check_lr_range(lr_range)
    tol = _check_number("tol", tol, hint=" (decades within which each point of interest is known)")
    _check_int("max_rounds", max_rounds, 0)
    _check_int("max_extend", max_extend, 0)
    points: dict = {}
    info = {"rounds": 0, "extended_left": 0, "extended_right": 0, "skipped": 0, "notes": []}

    def run(xs: list) -> None:
        xs = [x for x in xs if _key(x) not in points]
        if xs:
            try:
                results = evaluate([10.0 ** x for x in xs])
            except BudgetExhausted as exc:  # keep what was measured before the budget ran out
                results = exc.partial
                for x, losses in zip(xs, results):
                    points[_key(x)] = tuple(float(v) for v in losses)
                raise
            for x, losses in zip(xs, results):
                points[_key(x)] = tuple(float(v) for v in losses)

    def mean_curve():
        xs = sorted(points)
        ys = []
        for x in xs:
            v = points[x]
            ys.append(math.inf if any(not math.isfinite(u) for u in v) else sum(v) / len(v))
        return xs, ys

    try:
        _refine(run, mean_curve, points, info, lo, hi, tol, smooth, max_rounds, max_extend,
                plateau, width, patience)
    except BudgetExhausted:
        info["budget_exhausted"] = True
        info["notes"].append("the step budget ran out; the curve is read from the trials so far")
    if not points:
        raise ValueError("the step budget does not fit a single trial; raise budget=")
    xs, ys = mean_curve()
    analysis = analyze([10.0 ** x for x in xs], ys, smooth)
    info["notes"].extend(analysis.notes)
    return points, analysis, info


def find_lr(model: nn.Module, make_optimizer: Callable, loss_fn: Callable, train_data: Iterable,
            val_data: Iterable, steps: int = 20, *, lr_range=DEFAULT_LR_RANGE, tol: float = 0.125,
            pick: str = "log_midpoint", seeds=None, smooth: float = 0.15, diverge: float = 4.0,
            max_rounds: int = 10, max_extend: int = 6, eval_mode: bool = True, executor=None,
            workers: int = 2, progress: Optional[bool] = None,
            reducer: Optional[Reducer] = None, schedule: Optional[str] = None,
            total_steps: Optional[int] = None, budget: Optional[int] = None) -> FinderResult:
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
    smooth:
        Bandwidth (decades) of the local quadratic fits behind derivatives and curvature;
        0 = the paper's plain finite differences (see :mod:`autostep.finder.curve`).
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
    _check_lr_range(lr_range)
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be None or one of {SCHEDULES}, got {schedule!r}")
    if total_steps is not None:
        _check_int("total_steps", total_steps, 1, " (the length of the training run)")
        if budget is None:
            budget = max(total_steps // 10, 4 * len(seed_list))
    if budget is not None:
        _check_int("budget", budget, 4 * len(seed_list),
                   f" (at least two trials of two steps for each of the {len(seed_list)} seeds)")
        _check_int("steps", steps, 1, " (training steps per trial; the paper uses 20)")
        steps = trial_steps(budget, steps, len(seed_list))
    smooth = _check_number("smooth", smooth, strict=False,
                           hint=" (bandwidth in decades; 0 disables smoothing)")
    _check_int("workers", workers, 1)
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
        evaluator = _Evaluator(runner, payload, seed_list, executor, workers, bar, budget)
        if schedule is not None:
            return _find_peak(runner, evaluator, lr_range, tol, smooth, schedule, budget,
                              total_steps)
        points, analysis, info = search_curve(
            evaluator, lr_range, tol=tol, smooth=smooth, max_rounds=max_rounds,
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
            a = analyze([10.0 ** x for x in xs], [points[x][s] for x in xs], smooth)
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


def _find_peak(runner: TrialRunner, evaluator: "_Evaluator", lr_range, tol: float, smooth: float,
               schedule: str, budget: Optional[int], total_steps: Optional[int]) -> FinderResult:
    """The schedule-aware search (:mod:`autostep.finder.peak`): the peak rate for ``schedule``."""
    y0 = runner.initial_loss()

    def evaluate(lr: float) -> float:
        losses = evaluator([lr])[0]
        return math.inf if any(not math.isfinite(v) for v in losses) else sum(losses) / len(losses)

    best, points, info = peak_search(evaluate, y0, _check_lr_range(lr_range), tol=tol)
    xs = sorted(points)
    analysis = analyze([10.0 ** x for x in xs], [points[x] for x in xs], smooth, y_top=y0)
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
