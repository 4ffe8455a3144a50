"""Where :class:`~autostep.optim.autostep.Autostep` gets its losses, and how its inputs are checked.

* :func:`take_batches` keeps the fixed probe batches;
* :func:`probe_loss` evaluates them under ``no_grad`` with fixed randomness and restored buffers;
* :func:`first_rate` is the probe-loss line search along Adam's first direction that starts the ramp;
* :func:`grads_finite` and :func:`check_multipliers` check a step's gradients and ``lr`` values;
* :func:`run_state` checks the constructor's options and returns the run-level numbers that live in
  every param group (so that torch's checkpoint helpers keep them).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _validate as V

__all__ = ["SHAPES", "take_batches", "probe_loss", "first_rate", "grads_finite", "check_multipliers", "run_state"]

SHAPES = ("linear", "cosine")

#: seed of the fixed randomness (dropout masks) under which the probe batches are evaluated
PROBE_SEED = 12345


def take_batches(probe_data, n: int) -> list:
    """The first ``n`` batches of a list, tuple, DataLoader or any re-iterable (kept fixed)."""
    V.positive_int("Autostep: probe_batches", n)
    if isinstance(probe_data, (list, tuple)):
        batches = list(probe_data[:n])
    else:
        it = iter(probe_data)
        if it is probe_data:
            raise TypeError("Autostep: probe_data is a one-shot iterator (a generator?); pass a list of "
                            "batches or a DataLoader")
        batches = []
        for b in it:
            batches.append(b)
            if len(batches) >= n:
                break
    if not batches:
        raise ValueError("Autostep: probe_data holds no batch; pass at least one batch")
    return batches


@torch.no_grad()
def probe_loss(model: torch.nn.Module, loss_fn: Callable, batches: list) -> float:
    """Mean of ``loss_fn(model, batch)`` over ``batches``: fixed dropout masks, buffers restored."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    total = 0.0
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(PROBE_SEED)
            for batch in batches:
                total += float(loss_fn(model, batch).detach().float())
    finally:  # also when the loss function raises: BatchNorm statistics stay as they were
        for buf, saved in buffers:
            buf.copy_(saved)
    return total / len(batches)


@torch.no_grad()
def first_rate(params: list, eps: float, measure: Callable[[], float]) -> tuple[float, float]:
    """Probe-loss line search along Adam's first direction (about the sign of the gradient).

    Tries the rates 1e-1 ... 1e-6 from the current point; returns ``(best rate, loss at the start)``,
    the best rate being 1e-6 when none lowers the loss.  ``measure()`` returns the probe loss.  The
    parameters are back at the start afterwards, also when ``measure`` raises.
    """
    directions = [p.grad / (p.grad.abs() + eps) for p in params]
    start = [p.detach().clone() for p in params]
    try:
        base = measure()
        best_rate, best = 1e-6, base
        for e in range(1, 7):
            rate = 10.0 ** (-e)
            for p, w, d in zip(params, start, directions):
                p.copy_(w).sub_(d, alpha=rate)
            value = measure()
            if math.isfinite(value) and value < best:
                best_rate, best = rate, value
    finally:
        for p, w in zip(params, start):
            p.copy_(w)
    return best_rate, base


def grads_finite(params: list, reducer) -> bool:
    """Whether every gradient is finite on every rank (refuses sparse gradients).

    The shared fast test (:func:`autostep._validate.finite_hint`, one fused 2-norm and one host
    read) proves finiteness; only when it is not finite (an inf/NaN, or squares of huge finite
    values overflowing) is the exact :func:`~autostep._validate.tensor_list_finite` consulted.
    """
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError("Autostep does not support sparse gradients")
    grads = [p.grad for p in params]
    for check in (V.finite_hint, V.tensor_list_finite):
        ok = math.isfinite(float(check(grads)))
        if reducer.active:
            ok = reducer.mean([float(ok)])[0] == 1.0
        if ok:
            return True
    return False


def check_multipliers(groups: list) -> None:
    """Refuse a group ``lr`` (the multiplier on the found rate) that is not a finite number >= 0."""
    for g in groups:
        if not (isinstance(g["lr"], (int, float)) and math.isfinite(g["lr"]) and g["lr"] >= 0):
            raise ValueError(f"Autostep: param group lr (the multiplier on the found rate) is "
                             f"{g['lr']!r}; a scheduler or load_state_dict set it to a value that is "
                             "not a finite number >= 0")


def _fraction(name: str, value) -> float:
    """0 < value <= 1."""
    v = V.finite(name, value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return v


def run_state(*, lr, total_steps: Optional[int], probe: str, betas, eps, weight_decay, decay: str,
              ramp_steps: Optional[int], peak_fraction: float, ramp_growth: Optional[float],
              guard_every: Optional[int], rise: Optional[float], patience_factor: float,
              ramp_decades: float, ramp_start: float) -> dict:
    """Check Autostep's options with the shared validators of :mod:`autostep._validate` (each error
    names the value and what to pass) and return the run-level numbers kept in every param group."""
    V.positive("Autostep: lr", lr, " (lr is a multiplier on the found step size; 1.0 uses the rate as found)")
    if total_steps is not None:
        V.positive_int("Autostep: total_steps", total_steps,
                       hint=" (the number of step() calls in the run; None for Schedule-Free averaging)")
    V.betas("Autostep: betas", betas)
    V.positive("Autostep: eps", eps)
    V.nonnegative("Autostep: weight_decay", weight_decay)
    V.choice("Autostep: decay", decay, SHAPES)
    _fraction("Autostep: peak_fraction", peak_fraction)
    V.choice("Autostep: probe", probe, ("auto", "closure"))
    _fraction("Autostep: ramp_start", ramp_start)
    if ramp_steps is None:
        ramp_steps = max(10, total_steps // 10) if total_steps else 100
    V.positive_int("Autostep: ramp_steps", ramp_steps, minimum=2)
    if ramp_growth is None:  # `ramp_decades` decades over the longest ramp
        ramp_growth = 10.0 ** (V.positive("Autostep: ramp_decades", ramp_decades) / ramp_steps)
    V.greater_than("Autostep: ramp_growth", ramp_growth, 1.0)
    if rise is None:  # a fixed probe is noise-free; a closure's mini-batch losses are not
        rise = 0.1 if probe == "auto" else 0.25
    V.positive("Autostep: rise", rise)
    V.greater_than("Autostep: patience_factor", patience_factor, 1.0)
    if guard_every is not None:
        V.positive_int("Autostep: guard_every", guard_every, minimum=0, hint=" (0 turns the guard off)")
    if guard_every is None:
        guard_every = max(10, (total_steps or 1000) // 20)
    return dict(total_steps=total_steps, decay=decay, ramp_steps=ramp_steps, ramp_growth=ramp_growth,
                peak_fraction=peak_fraction, guard_every=guard_every, rise=rise,
                patience=max(2, math.ceil(math.log(patience_factor) / math.log(ramp_growth))), since_best=0,
                k=0, phase="start", ramp_lr=math.nan, best_loss=math.inf, best_lr=math.nan,
                ramp_end=0, last_loss=math.nan, forwards=0, skipped=0, rollbacks=0,
                sf_weight=0.0, sf_mode="train")
