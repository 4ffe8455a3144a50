"""One method built on one task and stepped one batch at a time, and the benchmark's LR schedules.

:class:`Stepper` is shared by :func:`autostep.bench.runner.run_one` (a whole run) and
:mod:`autostep.bench.overhead` (every method stepped in turn in one process), so both time exactly
the same work.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Optional

from .streams import probe_batches
from .tasks import Task

__all__ = ["Stepper", "cosine_factor", "schedule_factor", "warmup_steps", "current_lr"]


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def schedule_factor(schedule: Optional[str], step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak rate: ``"cosine"`` (warm-up + cosine), ``"linear"`` (warm-up + linear
    decay to zero at ``total``) or ``None`` (1)."""
    if schedule is None:
        return 1.0
    if schedule == "cosine":
        return cosine_factor(step, total, warmup)
    if schedule == "linear":
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'linear' or None")


def warmup_steps(spec, train_steps: int) -> int:
    """Warm-up length of a scheduled method: ``options['warmup']`` of the run (default 5%)."""
    if spec.schedule is None:
        return 0
    return max(1, int(spec.options.get("warmup", 0.05) * train_steps))


class Stepper:
    """One method built on one task and stepped one batch at a time, as the benchmark drives it.

    Shared by :func:`run_one` (a whole run) and :mod:`autostep.bench.overhead` (every method stepped
    in turn in one process), so both time exactly the same work.  ``peak_lr`` is the tuned or
    selected rate (kinds tuned/selector); scheduled methods of other kinds scale the rates they were
    built with.  ``train_steps`` is the schedule's length.
    """

    def __init__(self, task: Task, spec, seed: int, train_steps: int, peak_lr: Optional[float] = None,
                 total_steps: Optional[int] = None):
        self.task, self.spec = task, spec
        model, loss_fn = task.model, task.loss_fn
        self.params = list(model.parameters())
        context = {"total_steps": total_steps or train_steps, "dataset_size": task.dataset_size,
                   "batch_size": task.batch_size, "model": model, "loss_fn": loss_fn}
        if spec.options.get("probe_data"):  # methods that evaluate losses beyond the training batch
            context["probe_data"] = probe_batches(task, int(spec.options["probe_data"]), seed)
        with contextlib.redirect_stdout(io.StringIO()):  # some peers print banners when built
            if spec.kind == "wrapper":
                context.update(probe_data=probe_batches(task, 100, seed),
                               autolr_defaults={"total_steps": train_steps})
                opt = spec.build(self.params, context)
            elif spec.kind in ("tuned", "selector"):
                opt = spec.build(self.params, context, lr=peak_lr)
            else:
                opt = spec.build(self.params, context)
        self.opt = opt
        self.inner = getattr(opt, "optimizer", opt)
        self.base_lrs = [g.get("lr") for g in self.inner.param_groups]  # the published SaLSa has none
        self.train_steps = train_steps
        self.warmup = warmup_steps(spec, train_steps)
        if spec.train_eval_modes:
            opt.train()

    def step(self, t: int, batch) -> float:
        """Step ``t`` of the run on ``batch``; returns the batch loss (NaN for a non-finite start)."""
        spec, opt, model, loss_fn = self.spec, self.opt, self.task.model, self.task.loss_fn
        if spec.schedule is not None and None not in self.base_lrs:
            f = schedule_factor(spec.schedule, t, self.train_steps, self.warmup)
            for g, base in zip(self.inner.param_groups, self.base_lrs):
                g["lr"] = base * f
        try:
            if spec.kind == "closure":
                if spec.options.get("closure_style") == "backwards_kwarg":  # the published SaLSa
                    self.inner.zero_grad()

                    def closure(backwards=False):
                        loss = loss_fn(model, batch)
                        if backwards:
                            loss.backward()
                        return loss
                    loss = opt.step(closure)
                else:
                    loss = opt.step(lambda: loss_fn(model, batch))
            else:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                if spec.options.get("step_with_loss"):  # MoMo: step(loss=...) after backward
                    opt.step(loss=loss.detach())
                else:
                    opt.step()
            return float(loss.detach())
        except FloatingPointError:  # autostep.NonFiniteLossError: the start loss is already NaN
            return math.nan

    def eval_mode(self) -> None:
        if self.spec.train_eval_modes:
            self.opt.eval()

    def train_mode(self) -> None:
        if self.spec.train_eval_modes:
            self.opt.train()

    def current_lr(self) -> float:
        return current_lr(self.opt, self.inner)


def current_lr(opt, inner) -> float:
    """The step size in use: group["lr"] (times Prodigy's ``d``), or the published SaLSa's own."""
    group = inner.param_groups[0]
    lr = group.get("applied_lr", group.get("lr"))  # Autostep's lr is a multiplier
    if lr is None:
        lr = getattr(opt, "step_size", math.nan)
    d = group.get("d")
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        lr = lr * d
    return float(lr)
