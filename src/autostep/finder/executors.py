"""Running trials in parallel: worker processes, or any ``concurrent.futures``-style executor.

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
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

import torch

from .peak import BudgetExhausted
from .result import Trial
from .trials import TrialRunner

__all__ = ["TrialEvaluator", "remote_trial"]

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


class TrialEvaluator:
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
