"""Trials that all start from the same state: the reset of the step-sampling LR search.

Every trial starts from the same parameters and buffers, a fresh optimizer (so the same optimizer
state), the same batches in the same order, and the same generator state, so two trials differ
only in the learning rate (``lr-step-sampling-search.txt``, the paper's reason for existing).
:class:`TrialRunner` does that and is usable on its own, e.g. inside an Optuna objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Callable, Optional

import torch
from torch import nn

from .. import _validate as V
from .._snapshot import ModelState, RNGSnapshot
from ..distributed import Reducer

__all__ = ["TrialRunner", "cycle_batches"]


def cycle_batches(data):
    """Batches of the re-iterable ``data``, round after round, forever (refuses empty data)."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batch; pass at least one batch")


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
        V.reiterable("train_data", train_data)
        V.reiterable("val_data", val_data)
        self.steps = V.positive_int("steps", steps, 1, " (training steps per trial; the paper uses 20)")
        self.diverge = V.greater_than("diverge", diverge, 1.0,
                                      " (a trial stops when its loss exceeds diverge x the first loss)")
        V.not_meta(model.parameters(), "find_lr")
        self.model, self.make_optimizer, self.loss_fn = model, make_optimizer, loss_fn
        self.train_data, self.val_data = train_data, val_data
        self.eval_mode = bool(eval_mode)
        self.lr_factor = lr_factor
        self.reducer = reducer or Reducer()
        self._entry_rng = RNGSnapshot()
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        self._rng = RNGSnapshot()
        self._state = ModelState(model)
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
        return cycle_batches(data)

    def _reduce(self, value: float, device) -> float:
        if self.reducer.active:
            return self.reducer.mean([value], device)[0]
        return value

    def run(self, lr: float, seed: Optional[int] = None) -> tuple:
        """Train ``steps`` steps at ``lr`` from the saved state, score on ``val_data``, restore.

        Returns ``(val_loss, steps_run, diverged)``; ``val_loss`` is ``inf`` for a diverged trial.
        """
        lr = V.positive("lr", lr)
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
            loss = V.check_loss(self.loss_fn(self.model, batch), "on a training batch")
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
            loss = V.check_loss(self.loss_fn(self.model, batch), "on a validation batch")
            total += float(loss)
            device = loss.device
            count += 1
        if count == 0:
            raise ValueError("val_data yielded no batch; pass at least one validation batch")
        value = self._reduce(total / count, device)
        return value if math.isfinite(value) else math.inf
